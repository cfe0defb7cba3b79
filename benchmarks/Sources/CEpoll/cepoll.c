#include "cepoll.h"
#include <sys/epoll.h>
#include <stddef.h>

int cepoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cepoll_add(int epoll, int fd, uint32_t token) {
    struct epoll_event event = { .events = EPOLLIN, .data.u32 = token };
    return epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event);
}

int cepoll_remove(int epoll, int fd) { return epoll_ctl(epoll, EPOLL_CTL_DEL, fd, NULL); }

int cepoll_poll(int epoll, uint32_t *tokens, int capacity, int timeout_ms) {
    struct epoll_event events[256];
    if (capacity > 256) capacity = 256;
    int ready = epoll_wait(epoll, events, capacity, timeout_ms);
    for (int i = 0; i < ready; i++) tokens[i] = events[i].data.u32;
    return ready;
}

// epoll for the load generator (Swift's Glibc module does not export <sys/epoll.h>).
#include <stdint.h>

int cepoll_create(void);
// Watches fd for reading; `token` comes back from cepoll_wait when it is readable.
int cepoll_add(int epoll, int fd, uint32_t token);
int cepoll_remove(int epoll, int fd);
// Waits at most `timeout_ms` (0: not at all); writes up to `capacity` tokens of readable fds and
// returns how many (or -1).
int cepoll_poll(int epoll, uint32_t *tokens, int capacity, int timeout_ms);

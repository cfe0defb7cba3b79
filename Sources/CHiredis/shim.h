#ifndef KEYGATE_CHIREDIS_SHIM_H
#define KEYGATE_CHIREDIS_SHIM_H
// hiredis 0.14.1 (Debian libhiredis-dev) used only as a RESP2 reply parser; SwiftNIO does all I/O.
//
// The stock reader accepts `*2147483647` (reserving gigabytes) and buffers bulk strings without a cap
// (reliability.md, "hiredis 0.14.1 reader limits"). The guard below swaps in a createArray that
// refuses arrays over a limit; the Swift side caps buffered bytes. Any reader error is sticky, so the
// Swift side drops the connection on the first one.
#include <hiredis.h>
#include <stdlib.h>

typedef struct keygate_reader_guard {
    redisReplyObjectFunctions functions;          // copy of the defaults with createArray replaced
    void *(*create_array)(const redisReadTask *, int); // the stock createArray
    long long max_array_elements;
    int array_rejected;                           // set when the guard refused an array
} keygate_reader_guard;

static inline void *keygate_guarded_create_array(const redisReadTask *task, int elements) {
    keygate_reader_guard *guard = (keygate_reader_guard *)task->privdata;
    if (elements < 0 || (long long)elements > guard->max_array_elements) {
        guard->array_rejected = 1;
        return NULL; // hiredis turns NULL into a (sticky) reader error
    }
    return guard->create_array(task, elements);
}

/// A reader whose arrays are limited to `max_array_elements`; free with keygate_reader_free.
static inline redisReader *keygate_reader_create(long long max_array_elements) {
    redisReader *reader = redisReaderCreate();
    if (reader == NULL) return NULL;
    keygate_reader_guard *guard = (keygate_reader_guard *)calloc(1, sizeof(keygate_reader_guard));
    if (guard == NULL) { redisReaderFree(reader); return NULL; }
    guard->functions = *reader->fn;
    guard->create_array = guard->functions.createArray;
    guard->functions.createArray = keygate_guarded_create_array;
    guard->max_array_elements = max_array_elements;
    reader->fn = &guard->functions;
    reader->privdata = guard; // hiredis copies it into every read task
    return reader;
}

static inline int keygate_reader_array_rejected(redisReader *reader) {
    return ((keygate_reader_guard *)reader->privdata)->array_rejected;
}

/// Bytes fed to the reader and not yet consumed by a parsed element.
static inline size_t keygate_reader_buffered(redisReader *reader) {
    return reader->len - reader->pos;
}

static inline void keygate_reader_free(redisReader *reader) {
    if (reader == NULL) return;
    void *guard = reader->privdata;
    redisReaderFree(reader); // frees a half-built reply through reader->fn, so the guard outlives it
    free(guard);
}
#endif

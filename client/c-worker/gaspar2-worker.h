/* libgaspar2-worker: a remote worker for gaspar2 producers, on libzmq.
 *
 * A worker joins a producer's pool over ZeroMQ as `gaspar2 worker` does, speaking the
 * remote worker protocol (docs/reference/worker-protocol.rst): it says HELLO, takes the
 * producer's WELCOME, beats every heartbeat interval from a thread of its own (so a slow
 * handler is not taken for a dead worker), runs one request at a time through the
 * handler, and says HELLO again when the producer goes quiet, so it rejoins a producer
 * that restarts. */
#ifndef GASPAR2_WORKER_H
#define GASPAR2_WORKER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GASPAR2_WORKER_VERSION "1.0.0"
#define GASPAR2_WORKER_PROTOCOL 1       /* the protocol version its HELLO says */

/* Where a handler writes its reply (or, when it fails, why). The library owns the memory
 * and reuses it from one request to the next. */
typedef struct gaspar2_buffer {
    unsigned char *data;
    size_t size;
    size_t capacity;
} gaspar2_buffer;

/* Append n bytes; 0, or -1 when out of memory. */
int gaspar2_buffer_append(gaspar2_buffer *buffer, const void *data, size_t n);

/* Called for each request, one at a time, in the thread that called gaspar2_worker_run.
 * Return 0 and the buffer's bytes are the reply; return anything else and the request
 * fails, the buffer's bytes (UTF-8 text) saying why in the producer's log. */
typedef int (*gaspar2_handler)(void *arg, const unsigned char *request, size_t size,
                               gaspar2_buffer *out);

typedef struct gaspar2_worker_options {
    const char *connect;        /* the producer's remote endpoint: tcp://HOST:PORT */
    const char *listen;         /* the address to listen on (any free port); NULL: 127.0.0.1 */
    const char *advertise;      /* the numeric address the producer reaches it at; NULL:
                                   the listen address */
    const char *public_key;     /* CURVE: this worker's key pair and the producer's public */
    const char *secret_key;     /* key, 40 Z85 characters each; all three, or all NULL */
    const char *server_key;
    double heartbeat;           /* seconds, as the producer's --heartbeat; 0: 1 s */
    size_t max_message_size;    /* at least the producer's; 0: 64 MiB */
} gaspar2_worker_options;

/* Run the worker until gaspar2_worker_stop is called: 0 then; -1 when it cannot start (the
 * reason on stderr). */
int gaspar2_worker_run(const gaspar2_worker_options *options, gaspar2_handler handler,
                       void *arg);

/* Ask gaspar2_worker_run to return once the request under way is answered. Safe to call
 * from a signal handler. */
void gaspar2_worker_stop(void);

#ifdef __cplusplus
}
#endif

#endif

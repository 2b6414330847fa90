/* libgaspar2-worker: the remote worker protocol, version 1, on libzmq.
 * See gaspar2-worker.h, and docs/reference/worker-protocol.rst for the protocol.
 *
 * Two threads, each with sockets of its own (ZeroMQ sockets are not thread-safe): the
 * caller's runs the handler and sends the answers; a beat thread says HELLO, beats, and
 * answers the ZAP requests of the worker's CURVE endpoint, so that neither waits for a
 * slow handler. They share the token and the time the producer was last heard from. */
#include "gaspar2-worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define HEAD_HELLO 21           /* kind, id, token, pid */
#define HEAD_BEAT 17            /* kind, id, token */
#define HEAD_ANSWER 25          /* kind, id, token, request id */
#define BATCH_FIXED 21          /* kind, epoch, seq, count */
#define MISSED_BEATS 3
#define HEADROOM (64 * 1024)
#define REMOTE_ID_MIN (UINT64_C(1) << 32)
#define MAX_ERROR (32 * 1024)
#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

static volatile sig_atomic_t stopping;

typedef struct worker {
    const gaspar2_worker_options *options;
    void *ctx;
    uint64_t id;
    char endpoint[300];             /* what the HELLO names */
    double heartbeat;
    _Atomic uint64_t token;
    _Atomic uint64_t max_reply;
    _Atomic int64_t contact_ms;     /* when the producer was last heard from */
    _Atomic int welcomed;           /* a WELCOME came: beat at once */
    _Atomic int done;
    void *zap;                      /* the ZAP handler's socket, with CURVE */
} worker;

void gaspar2_worker_stop(void) { stopping = 1; }

int gaspar2_buffer_append(gaspar2_buffer *b, const void *data, size_t n) {
    if (n > b->capacity - b->size) {
        size_t capacity = b->capacity ? b->capacity : 4096;
        while (capacity - b->size < n) {
            if (capacity > SIZE_MAX / 2) return -1;
            capacity *= 2;
        }
        unsigned char *grown = realloc(b->data, capacity);
        if (!grown) return -1;
        b->data = grown;
        b->capacity = capacity;
    }
    if (n) memcpy(b->data + b->size, data, n);
    b->size += n;
    return 0;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}
static void put32(unsigned char *p, uint32_t v) {
    for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (unsigned char)v;
}
static uint64_t get64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}
static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void head(unsigned char *out, char kind, const worker *w) {
    out[0] = (unsigned char)kind;
    put64(out + 1, w->id);
    put64(out + 9, atomic_load(&w->token));
}

static int curve_on(const gaspar2_worker_options *o) { return o->secret_key != NULL; }

/* Options of every socket that faces the network (as gaspar2's wire.limit_peer). */
static int limit(void *sock, const worker *w, int linger) {
    int64_t most = (int64_t)w->options->max_message_size + HEADROOM;
    int handshake = 5000;
    return zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger)
        | zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &most, sizeof most)
        | zmq_setsockopt(sock, ZMQ_HANDSHAKE_IVL, &handshake, sizeof handshake);
}

/* A PUSH to the producer's remote endpoint. */
static void *pusher(worker *w) {
    const gaspar2_worker_options *o = w->options;
    void *push = zmq_socket(w->ctx, ZMQ_PUSH);
    if (!push) return NULL;
    int rc = limit(push, w, 1000);
    if (curve_on(o))
        rc |= zmq_setsockopt(push, ZMQ_CURVE_SERVERKEY, o->server_key, 41)
            | zmq_setsockopt(push, ZMQ_CURVE_PUBLICKEY, o->public_key, 41)
            | zmq_setsockopt(push, ZMQ_CURVE_SECRETKEY, o->secret_key, 41);
    if (rc || zmq_connect(push, o->connect)) {
        fprintf(stderr, "gaspar2-worker: cannot connect to %s: %s\n", o->connect,
                zmq_strerror(zmq_errno()));
        zmq_close(push);
        return NULL;
    }
    return push;
}

static void send_hello(void *push, worker *w) {
    unsigned char h[HEAD_HELLO], version[2] = {0, GASPAR2_WORKER_PROTOCOL};
    const char *key = curve_on(w->options) ? w->options->public_key : "";
    head(h, 'H', w);
    put32(h + 17, (uint32_t)getpid());
    zmq_send(push, h, sizeof h, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(push, w->endpoint, strlen(w->endpoint), ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(push, key, strlen(key), ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(push, version, sizeof version, ZMQ_DONTWAIT);
}

/* One ZAP request: accept the producer's key alone (RFC 27, ZeroMQ's ZAP). */
static void answer_zap(void *zap, const unsigned char *server_key) {
    zmq_msg_t part[7];
    int n = 0, more = 1;
    while (more && n < 7) {
        zmq_msg_init(&part[n]);
        if (zmq_msg_recv(&part[n], zap, 0) < 0) { zmq_msg_close(&part[n]); break; }
        more = zmq_msg_more(&part[n]);
        n++;
    }
    while (more) {                      /* more parts than a request has: drop them */
        zmq_msg_t rest;
        zmq_msg_init(&rest);
        if (zmq_msg_recv(&rest, zap, 0) < 0) { zmq_msg_close(&rest); break; }
        more = zmq_msg_more(&rest);
        zmq_msg_close(&rest);
    }
    int ok = n == 7 && zmq_msg_size(&part[5]) == 5 && !memcmp(zmq_msg_data(&part[5]), "CURVE", 5)
        && zmq_msg_size(&part[6]) == 32 && !memcmp(zmq_msg_data(&part[6]), server_key, 32);
    if (n >= 2) {
        const char *status = ok ? "200" : "400", *text = ok ? "OK" : "unknown key";
        zmq_send(zap, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(zap, zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), ZMQ_SNDMORE);
        zmq_send(zap, status, 3, ZMQ_SNDMORE);
        zmq_send(zap, text, strlen(text), ZMQ_SNDMORE);
        zmq_send(zap, "", 0, ZMQ_SNDMORE);
        zmq_send(zap, "", 0, 0);
    }
    for (int i = 0; i < n; i++) zmq_msg_close(&part[i]);
}

/* The beat thread: HELLO at once and whenever the producer has been quiet for
 * MISSED_BEATS intervals; a heartbeat every interval once welcomed, and at once after a
 * WELCOME; the ZAP handler's answers in between. */
static void *beat(void *arg) {
    worker *w = arg;
    void *push = pusher(w);
    unsigned char server_key[32];
    if (w->zap) zmq_z85_decode(server_key, w->options->server_key);
    int64_t interval = (int64_t)(w->heartbeat * 1000), next = 0, hello = 0;
    if (interval < 1) interval = 1;
    while (push && !atomic_load(&w->done)) {
        int64_t now = now_ms();
        if (now - atomic_load(&w->contact_ms) > MISSED_BEATS * interval && now >= hello) {
            send_hello(push, w);
            hello = now + MISSED_BEATS * interval;
        }
        if (atomic_exchange(&w->welcomed, 0) || (atomic_load(&w->token) && now >= next)) {
            unsigned char h[HEAD_BEAT];
            head(h, 'P', w);
            zmq_send(push, h, sizeof h, ZMQ_DONTWAIT);
            next = now + interval;
        }
        zmq_pollitem_t item = {w->zap, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, w->zap ? 1 : 0, 10) > 0) answer_zap(w->zap, server_key);
        else if (!w->zap) {
            struct timespec pause = {0, 10 * 1000000};
            nanosleep(&pause, NULL);
        }
    }
    if (push) zmq_close(push);
    return NULL;
}

static void send_answer(void *push, worker *w, char kind, uint64_t request_id,
                        const unsigned char *body, size_t size) {
    zmq_msg_t msg;
    if (zmq_msg_init_size(&msg, HEAD_ANSWER + size)) return;
    unsigned char *p = zmq_msg_data(&msg);
    head(p, kind, w);
    put64(p + 17, request_id);
    if (size) memcpy(p + HEAD_ANSWER, body, size);
    if (zmq_msg_send(&msg, push, 0) < 0) zmq_msg_close(&msg);
}

static void fail(void *push, worker *w, uint64_t request_id, const char *text, size_t size) {
    if (size > MAX_ERROR) {
        text += size - MAX_ERROR;
        size = MAX_ERROR;
    }
    send_answer(push, w, 'E', request_id, (const unsigned char *)text, size);
}

/* Run each request of one batch frame; false when the frame is not a batch. */
static int run_batch(void *push, worker *w, const unsigned char *p, size_t size,
                     gaspar2_handler handler, void *arg, gaspar2_buffer *out) {
    if (size < 2 * BATCH_FIXED || p[0] != 'B') return 0;
    uint64_t count = get32(p + 17);
    if (count > (size - 2 * BATCH_FIXED) / 12) return 0;
    size_t at = BATCH_FIXED + 12 * count, total = at + BATCH_FIXED;
    for (uint64_t i = 0; i < count; i++) {
        size_t length = get32(p + BATCH_FIXED + 8 * count + 4 * i);
        if (length > size - total) return 0;
        total += length;
    }
    if (total != size || memcmp(p, p + size - BATCH_FIXED, BATCH_FIXED)) return 0;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t request_id = get64(p + BATCH_FIXED + 8 * i);
        size_t length = get32(p + BATCH_FIXED + 8 * count + 4 * i);
        out->size = 0;
        if (request_id >> 63) {
            const char *why = "a request in shared memory, and no shared memory here";
            fail(push, w, request_id, why, strlen(why));
        } else if (handler(arg, p + at, length, out) != 0) {
            if (out->size) fail(push, w, request_id, (const char *)out->data, out->size);
            else fail(push, w, request_id, "the handler failed", 18);
        } else if (out->size > atomic_load(&w->max_reply)) {
            char why[128];
            int n = snprintf(why, sizeof why, "a reply of %zu bytes, over max_reply_size %llu",
                             out->size, (unsigned long long)atomic_load(&w->max_reply));
            fail(push, w, request_id, why, (size_t)n);
        } else {
            send_answer(push, w, 'R', request_id, out->data, out->size);
        }
        at += length;
    }
    return 1;
}

/* A control message (two or more frames, the first of one byte). */
static void control(worker *w, zmq_msg_t *part, int n) {
    const unsigned char *kind = zmq_msg_data(&part[0]);
    if (kind[0] == 'W' && n == 2 && zmq_msg_size(&part[1]) == 16) {
        const unsigned char *body = zmq_msg_data(&part[1]);
        atomic_store(&w->max_reply, get64(body + 8));
        atomic_store(&w->token, get64(body));
        atomic_store(&w->welcomed, 1);
        atomic_store(&w->contact_ms, now_ms());
    } else if (kind[0] == 'N' && n == 3) {
        int length = (int)(zmq_msg_size(&part[2]) > 1024 ? 1024 : zmq_msg_size(&part[2]));
        fprintf(stderr, "gaspar2-worker: the producer at %s refused this worker: %.*s "
                "(this worker speaks protocol version %d)\n", w->options->connect, length,
                (const char *)zmq_msg_data(&part[2]), GASPAR2_WORKER_PROTOCOL);
        atomic_store(&w->contact_ms, now_ms());
    } else {
        fprintf(stderr, "gaspar2-worker: ignored a control message of %d frames\n", n);
    }
}

static uint64_t random_id(void) {
    uint64_t r = 0;
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, &r, sizeof r) != (ssize_t)sizeof r)
        r = (uint64_t)now_ms() * 6364136223846793005u ^ (uint64_t)getpid();
    if (fd >= 0) close(fd);
    return REMOTE_ID_MIN + r % ((UINT64_C(1) << 63) - REMOTE_ID_MIN);
}

static int setup(worker *w, void **pull) {
    const gaspar2_worker_options *o = w->options;
    const char *listen = o->listen ? o->listen : "127.0.0.1";
    char bind_to[300], bound[300];
    if (!o->connect || (curve_on(o) && (!o->public_key || !o->server_key))
        || (o->public_key && strlen(o->public_key) != 40) || (o->secret_key
        && strlen(o->secret_key) != 40) || (o->server_key && strlen(o->server_key) != 40)) {
        fprintf(stderr, "gaspar2-worker: needs connect, and CURVE keys of 40 Z85 characters "
                "(all three, or none)\n");
        return -1;
    }
    if (curve_on(o)) {       /* the ZAP handler: bound before anything can connect */
        w->zap = zmq_socket(w->ctx, ZMQ_REP);
        if (!w->zap || zmq_bind(w->zap, ZAP_ENDPOINT)) return -1;
    }
    *pull = zmq_socket(w->ctx, ZMQ_PULL);
    if (!*pull || limit(*pull, w, 0)) return -1;
    if (curve_on(o)) {
        int server = 1;
        if (zmq_setsockopt(*pull, ZMQ_CURVE_SERVER, &server, sizeof server)
            || zmq_setsockopt(*pull, ZMQ_CURVE_SECRETKEY, o->secret_key, 41)) return -1;
    }
    snprintf(bind_to, sizeof bind_to, strchr(listen, ':') ? "tcp://[%s]:*" : "tcp://%s:*",
             listen);
    size_t length = sizeof bound;
    if (zmq_bind(*pull, bind_to) || zmq_getsockopt(*pull, ZMQ_LAST_ENDPOINT, bound, &length)) {
        fprintf(stderr, "gaspar2-worker: cannot listen on %s: %s\n", bind_to,
                zmq_strerror(zmq_errno()));
        return -1;
    }
    const char *port = strrchr(bound, ':');
    const char *host = o->advertise ? o->advertise : listen;
    snprintf(w->endpoint, sizeof w->endpoint, strchr(host, ':') ? "tcp://[%s]%s" : "tcp://%s%s",
             host, port ? port : ":0");
    return 0;
}

int gaspar2_worker_run(const gaspar2_worker_options *options, gaspar2_handler handler,
                       void *arg) {
    gaspar2_worker_options o = *options;
    if (!o.max_message_size) o.max_message_size = 64u << 20;
    worker w = {.options = &o, .heartbeat = o.heartbeat > 0 ? o.heartbeat : 1.0};
    atomic_init(&w.token, 0);
    atomic_init(&w.max_reply, o.max_message_size);
    atomic_init(&w.contact_ms, INT64_MIN / 2);
    atomic_init(&w.welcomed, 0);
    atomic_init(&w.done, 0);
    w.id = random_id();
    w.ctx = zmq_ctx_new();
    void *pull = NULL, *push = NULL;
    pthread_t beater;
    int started = 0, status = -1;
    if (!w.ctx || setup(&w, &pull) || !(push = pusher(&w))) goto out;
    if (pthread_create(&beater, NULL, beat, &w)) goto out;
    started = 1;
    status = 0;
    gaspar2_buffer out = {0};
    zmq_msg_t part[4];
    while (!stopping) {
        zmq_pollitem_t item = {pull, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 100) <= 0) continue;
        int n = 0, more = 1, extra = 0;
        while (more) {
            zmq_msg_t *m = n < 4 ? &part[n] : NULL, rest;
            if (!m) m = &rest;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, pull, ZMQ_DONTWAIT) < 0) { zmq_msg_close(m); break; }
            more = zmq_msg_more(m);
            if (m == &rest) { zmq_msg_close(m); extra++; } else n++;
        }
        if (extra || n == 0) {
            fprintf(stderr, "gaspar2-worker: dropped a message of %d frames\n", n + extra);
        } else if (n > 1 && zmq_msg_size(&part[0]) == 1) {
            control(&w, part, n);
        } else if (n == 1 && run_batch(push, &w, zmq_msg_data(&part[0]), zmq_msg_size(&part[0]),
                                       handler, arg, &out)) {
            atomic_store(&w.contact_ms, now_ms());
        } else {
            fprintf(stderr, "gaspar2-worker: dropped a malformed batch\n");
        }
        for (int i = 0; i < n; i++) zmq_msg_close(&part[i]);
    }
    free(out.data);
out:
    if (status) fprintf(stderr, "gaspar2-worker: cannot start: %s\n", zmq_strerror(zmq_errno()));
    atomic_store(&w.done, 1);
    if (started) pthread_join(beater, NULL);
    if (push) zmq_close(push);
    if (pull) zmq_close(pull);
    if (w.zap) zmq_close(w.zap);
    if (w.ctx) zmq_ctx_term(w.ctx);
    stopping = 0;
    return status;
}

/* loadgen: a closed-loop load generator for gaspar2's wire protocol.
 *
 * One TCP connection per request: connect (non-blocking), send a 4-byte big-endian length and
 * the payload, read the reply until EOF, compare it with the expected reply, close, start over.
 * CONC slots run at once from one epoll loop per thread, so the generator costs far less CPU
 * than any server it measures. Prints one JSON object on stdout.
 *
 *   loadgen -p PORT [-c CONC] [-j THREADS] [-d SECONDS | -n COUNT] [-w WARMUP] [-t TIMEOUT]
 *           [-s SIZE | -f PAYLOAD_FILE] [-e EXPECTED_FILE] [-H] [-m]
 *           [-S SLOW_FILE [-E SLOW_EXPECTED_FILE] [-k EVERY]]
 *
 *   -c  concurrent requests (default 1)
 *   -j  threads, each with its own epoll loop and a share of the CONC slots (default 1)
 *   -d  seconds measured after the warm-up (default 5); with -n, a time limit (default 3600)
 *   -n  measure exactly COUNT requests (started after the warm-up), then stop
 *   -w  warm-up seconds, not measured (default 1)
 *   -t  per-request timeout in seconds (default 10): counted as a timeout and closed
 *   -s  payload of SIZE bytes (default 100);  -f  payload read from a file
 *   -e  the expected reply, from a file (default: the payload itself, i.e. echo)
 *   -H  half-close the connection after sending
 *   -m  mark the measured window: a line "window begins" on stderr as it begins, and
 *       "window ends" as it ends (with -n: once the last counted request is done), so
 *       that another program can read figures of its own over the same window
 *   -S  mixed load: besides the CONC quick slots, one extra slot sends this slow payload
 *       after every EVERY (-k, default 100) quick replies, never two at once; its reply
 *       is -E (default: the slow payload). Quick and slow latencies are reported apart.
 *       The slow slot runs in the first thread; quick replies are counted over all.
 *
 * Outcomes are counted apart: ok (reply verified), wrong (EOF but a different reply),
 * reset (ECONNRESET/EPIPE, the protocol's failure signal), refused (ECONNREFUSED),
 * timeout, other (any other socket error). A request counts in the window it completes in
 * (with -n: if it started after the warm-up).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { OK, WRONG, RESET, REFUSED, TIMEOUT, OTHER, OUTCOMES };
static const char *outcome_names[OUTCOMES] = {"ok", "wrong", "resets", "refused", "timeouts", "other"};

typedef struct { char *data; size_t len; } buf_t;
typedef struct { double *v; size_t n, cap; } samples_t;

typedef struct {
    int fd, busy, slow, bad, counted;
    size_t sent, got;
    double started;
    const buf_t *req, *expect;
} slot_t;

static struct {
    int port, conc, threads, half_close, marks;
    long count, every;
    double duration, warmup, timeout;
} opt = {0, 1, 1, 0, 0, 0, 100, 5, 1, 10};

/* Read-only once the threads start, but for quick_since_slow (atomic). */
static buf_t quick_req, quick_expect, slow_req, slow_expect;
static int mixed;
static double measure_from, measure_to;
static long quick_since_slow;

/* One thread's loop and what it counted. */
typedef struct {
    pthread_t thread;
    int ep, n;
    slot_t *slots;
    long count;                         /* with -n: this thread's share */
    long outcomes[OUTCOMES], started_measured;
    double bytes_ok;
    samples_t quick_lat, slow_lat;
    char scratch[1 << 16];
} gen_t;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static buf_t read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    buf_t b = {malloc(len + 1), (size_t)len};
    if (len && fread(b.data, 1, len, f) != (size_t)len) die(path);
    fclose(f);
    return b;
}

static buf_t frame(buf_t payload) {
    buf_t b = {malloc(payload.len + 4), payload.len + 4};
    uint32_t n = htonl((uint32_t)payload.len);
    memcpy(b.data, &n, 4);
    memcpy(b.data + 4, payload.data, payload.len);
    return b;
}

static void record(samples_t *s, double v) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 65536;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) die("realloc");
    }
    s->v[s->n++] = v;
}

/* Close the slot's connection and count its outcome if it falls in the measured window. */
static void finish(gen_t *g, slot_t *s, int outcome) {
    double t = now();
    close(s->fd);
    s->busy = 0;
    if (!s->slow) __atomic_add_fetch(&quick_since_slow, 1, __ATOMIC_RELAXED);
    int in_window = opt.count ? s->counted : (t >= measure_from && t <= measure_to);
    if (!in_window) return;
    g->outcomes[outcome]++;
    if (outcome == OK) {
        g->bytes_ok += s->req->len - 4 + s->got;
        record(s->slow ? &g->slow_lat : &g->quick_lat, t - s->started);
    }
}

static int classify(int err) {
    if (err == ECONNRESET || err == EPIPE) return RESET;
    if (err == ECONNREFUSED) return REFUSED;
    return OTHER;
}

/* Send what the socket takes; 1 once the whole request is out (0: later, or failed). */
static int send_some(gen_t *g, slot_t *s) {
    while (s->sent < s->req->len) {
        ssize_t w = send(s->fd, s->req->data + s->sent, s->req->len - s->sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN) finish(g, s, classify(errno));
            return 0;
        }
        s->sent += w;
    }
    if (opt.half_close) shutdown(s->fd, SHUT_WR);
    return 1;
}

/* Open a connection for the slot's next request and send at once if it is already up.
 * The socket is watched edge-triggered for both directions, so it is registered once. */
static void start(gen_t *g, slot_t *s) {
    s->req = s->slow ? &slow_req : &quick_req;
    s->expect = s->slow ? &slow_expect : &quick_expect;
    s->sent = s->got = 0;
    s->bad = 0;
    s->started = now();
    s->counted = s->started >= measure_from;
    g->started_measured += s->counted;
    s->busy = 1;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) die("socket");
    int one = 1;
    if (s->req->len > 16384)            /* sent in pieces: do not let Nagle hold the last one */
        setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = s};
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, s->fd, &e) < 0) die("epoll_ctl");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(opt.port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(s->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS)
        return finish(g, s, classify(errno));
    send_some(g, s);
}

/* Read until the socket would block, checking the reply against the expected one as it
 * comes; a reply longer than expected is wrong at once, which also bounds the loop. */
static void on_readable(gen_t *g, slot_t *s) {
    for (;;) {
        ssize_t r = recv(s->fd, g->scratch, sizeof g->scratch, 0);
        if (r == 0) return finish(g, s, !s->bad && s->got == s->expect->len ? OK : WRONG);
        if (r < 0) {
            if (errno != EAGAIN) finish(g, s, classify(errno));
            return;
        }
        if (s->got + r > s->expect->len) return finish(g, s, WRONG);
        if (memcmp(g->scratch, s->expect->data + s->got, r)) s->bad = 1;
        s->got += r;
    }
}

static void on_event(gen_t *g, slot_t *s, uint32_t events) {
    if (s->sent < s->req->len && !send_some(g, s)) return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(g, s);
}

static int may_start(gen_t *g, double t) {
    if (opt.count) return t < measure_from || g->started_measured < g->count;
    return t < measure_to;
}

/* Once per loop: fail requests past their timeout, refill idle slots. */
static void tend(gen_t *g, double t) {
    for (int i = 0; i < g->n; i++) {
        slot_t *s = &g->slots[i];
        if (s->busy && t - s->started > opt.timeout) finish(g, s, TIMEOUT);
        if (s->busy || !may_start(g, t)) continue;
        if (s->slow && __atomic_load_n(&quick_since_slow, __ATOMIC_RELAXED) < opt.every) continue;
        if (s->slow) __atomic_store_n(&quick_since_slow, 0, __ATOMIC_RELAXED);
        start(g, s);
    }
}

static int busy_count(slot_t *slots, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += slots[i].busy;
    return k;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile, in milliseconds. */
static double pct(const samples_t *s, double p) {
    if (!s->n) return 0;
    size_t rank = (size_t)(p * s->n + 0.999999);
    return s->v[(rank ? rank : 1) - 1] * 1e3;
}

static void print_latency(const char *name, samples_t *s) {
    qsort(s->v, s->n, sizeof(double), cmp);
    printf("\"%s\": {\"count\": %zu, \"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, "
           "\"max_ms\": %.4f}", name, s->n, pct(s, .50), pct(s, .90), pct(s, .99), pct(s, 1));
}

static void merge(samples_t *into, const samples_t *from) {
    for (size_t i = 0; i < from->n; i++) record(into, from->v[i]);
}

/* Add every thread's counts into the first one's, then print them. */
static void report(gen_t *gens, double seconds, double cpu) {
    gen_t *all = &gens[0];
    for (int t = 1; t < opt.threads; t++) {
        for (int i = 0; i < OUTCOMES; i++) all->outcomes[i] += gens[t].outcomes[i];
        all->bytes_ok += gens[t].bytes_ok;
        merge(&all->quick_lat, &gens[t].quick_lat);
        merge(&all->slow_lat, &gens[t].slow_lat);
    }
    printf("{\"requests\": %ld, \"seconds\": %.3f, \"rps\": %.1f, \"mb_per_s\": %.3f, "
           "\"loadgen_cpu\": %.3f, \"threads\": %d, \"errors\": {", all->outcomes[OK], seconds,
           all->outcomes[OK] / seconds, all->bytes_ok / seconds / 1e6, cpu / seconds, opt.threads);
    for (int i = WRONG; i < OUTCOMES; i++)
        printf("\"%s\": %ld%s", outcome_names[i], all->outcomes[i], i + 1 < OUTCOMES ? ", " : "}, ");
    print_latency("latency", &all->quick_lat);
    if (mixed) {
        printf(", ");
        print_latency("slow_latency", &all->slow_lat);
    }
    printf("}\n");
}

static void parse(int argc, char **argv, buf_t *payload, const char **expect, const char **slow,
                  const char **slow_expect) {
    int c, duration_given = 0;
    size_t size = 100;
    const char *payload_file = NULL;
    while ((c = getopt(argc, argv, "p:c:j:d:n:w:t:s:f:e:HmS:E:k:")) != -1) {
        switch (c) {
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.conc = atoi(optarg); break;
        case 'j': opt.threads = atoi(optarg); break;
        case 'd': opt.duration = atof(optarg); duration_given = 1; break;
        case 'n': opt.count = atol(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 't': opt.timeout = atof(optarg); break;
        case 's': size = strtoul(optarg, NULL, 10); break;
        case 'f': payload_file = optarg; break;
        case 'e': *expect = optarg; break;
        case 'H': opt.half_close = 1; break;
        case 'm': opt.marks = 1; break;
        case 'S': *slow = optarg; break;
        case 'E': *slow_expect = optarg; break;
        case 'k': opt.every = atol(optarg); break;
        default: fprintf(stderr, "usage: see the comment at the top of loadgen.c\n"); exit(2);
        }
    }
    if (opt.port <= 0 || opt.conc <= 0 || opt.every <= 0 || opt.threads <= 0) {
        fprintf(stderr, "loadgen: -p PORT is required; -c, -j and -k must be positive\n");
        exit(2);
    }
    if (opt.threads > opt.conc) opt.threads = opt.conc;
    if (opt.count && !duration_given) opt.duration = 3600;
    if (payload_file) {
        *payload = read_file(payload_file);
    } else {
        payload->data = malloc(size + 1);
        payload->len = size;
        for (size_t i = 0; i < size; i++) payload->data[i] = 'a' + i % 26;
    }
}

static void sleep_until(double t) {
    double wait = t - now();
    if (wait > 0) {
        struct timespec ts = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void mark(const char *line) {
    if (opt.marks) fprintf(stderr, "%s\n", line);
}

static void raise_fd_limit(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

/* One thread: its own epoll loop over its own slots until the run is over. */
static void *run(void *arg) {
    gen_t *g = arg;
    if ((g->ep = epoll_create1(0)) < 0) die("epoll_create1");
    struct epoll_event events[512];
    double t = now();
    for (;;) {
        tend(g, t);
        if (t >= measure_to) break;
        if (opt.count && g->started_measured >= g->count && !busy_count(g->slots, g->n)) break;
        int k = epoll_wait(g->ep, events, 512, 10);
        for (int i = 0; i < k; i++) {
            slot_t *s = events[i].data.ptr;
            if (s->busy) on_event(g, s, events[i].events);
        }
        t = now();
    }
    return NULL;
}

/* Share the slots (and, with -n, the count) among the threads; the slow slot goes first. */
static gen_t *make_threads(void) {
    gen_t *gens = calloc(opt.threads, sizeof(gen_t));
    if (!gens) die("calloc");
    for (int t = 0; t < opt.threads; t++) {
        gen_t *g = &gens[t];
        int quick = opt.conc / opt.threads + (t < opt.conc % opt.threads);
        g->n = quick + (mixed && t == 0);
        g->slots = calloc(g->n, sizeof(slot_t));
        if (!g->slots) die("calloc");
        if (mixed && t == 0) g->slots[quick].slow = 1;
        g->count = opt.count / opt.threads + (t < opt.count % opt.threads);
    }
    return gens;
}

int main(int argc, char **argv) {
    buf_t payload;
    const char *expect_path = NULL, *slow_path = NULL, *slow_expect_path = NULL;
    parse(argc, argv, &payload, &expect_path, &slow_path, &slow_expect_path);
    raise_fd_limit();
    quick_req = frame(payload);
    quick_expect = expect_path ? read_file(expect_path) : payload;
    mixed = slow_path != NULL;
    if (mixed) {
        slow_req = frame(read_file(slow_path));
        slow_expect = read_file(slow_expect_path ? slow_expect_path : slow_path);
    }
    gen_t *gens = make_threads();
    double began = now();
    measure_from = began + opt.warmup;
    measure_to = measure_from + opt.duration;
    for (int t = 0; t < opt.threads; t++)
        if (pthread_create(&gens[t].thread, NULL, run, &gens[t])) die("pthread_create");
    sleep_until(measure_from);
    double cpu_from = cpu_seconds();
    mark("window begins");
    if (!opt.count) {
        sleep_until(measure_to);
        mark("window ends");
    }
    for (int t = 0; t < opt.threads; t++) pthread_join(gens[t].thread, NULL);
    if (opt.count) mark("window ends");
    double end = opt.count ? now() : measure_to;
    double seconds = end - measure_from;
    report(gens, seconds > 0 ? seconds : 1e-9, cpu_seconds() - cpu_from);
    return 0;
}

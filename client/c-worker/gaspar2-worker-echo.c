/* gaspar2-worker-echo: one remote worker that echoes each request, with the conformance
 * kit's requests (docs/reference/worker-protocol.rst): "gaspar2-conformance:fail" fails,
 * "gaspar2-conformance:sleep:SECONDS" sleeps, then echoes.
 *
 *   gaspar2-worker-echo tcp://PRODUCER:PORT [HEARTBEAT [LISTEN-ADDRESS]]
 *
 * With CURVE, the keys come from GASPAR2_PUBLIC_KEY, GASPAR2_SECRET_KEY and
 * GASPAR2_SERVER_KEY (Z85). TERM or INT stops it once the request under way is answered. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gaspar2-worker.h"

#define PREFIX "gaspar2-conformance:"

static int echo(void *arg, const unsigned char *request, size_t size, gaspar2_buffer *out) {
    (void)arg;
    size_t prefix = strlen(PREFIX);
    if (size >= prefix && !memcmp(request, PREFIX, prefix)) {
        const char *command = (const char *)request + prefix;
        size_t left = size - prefix;
        if (left == 4 && !memcmp(command, "fail", 4)) {
            const char *why = "failed on purpose, as the conformance kit asked";
            gaspar2_buffer_append(out, why, strlen(why));
            return 1;
        }
        if (left > 6 && left < 32 && !memcmp(command, "sleep:", 6)) {
            char seconds[32];
            memcpy(seconds, command + 6, left - 6);
            seconds[left - 6] = 0;
            double s = atof(seconds);
            struct timespec pause = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
            while (nanosleep(&pause, &pause)) {}
        }
    }
    return gaspar2_buffer_append(out, request, size) ? (gaspar2_buffer_append(
        out, "out of memory", 13), 1) : 0;
}

static void stop(int signum) {
    (void)signum;
    gaspar2_worker_stop();
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s tcp://PRODUCER:PORT [HEARTBEAT [LISTEN-ADDRESS]]\n", argv[0]);
        return 2;
    }
    gaspar2_worker_options options = {
        .connect = argv[1],
        .heartbeat = argc > 2 ? atof(argv[2]) : 1.0,
        .listen = argc > 3 ? argv[3] : "127.0.0.1",
        .public_key = getenv("GASPAR2_PUBLIC_KEY"),
        .secret_key = getenv("GASPAR2_SECRET_KEY"),
        .server_key = getenv("GASPAR2_SERVER_KEY"),
    };
    struct sigaction action = {0};
    action.sa_handler = stop;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    return gaspar2_worker_run(&options, echo, NULL) ? 1 : 0;
}

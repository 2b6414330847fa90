/*
 * gaspar2-request [--timeout SECONDS] ADDRESS [MESSAGE]
 *
 * ADDRESS is HOST:PORT, [V6]:PORT, unix:PATH or unix:@NAME (Linux's abstract namespace).
 * Sends MESSAGE (standard input when it is absent or "-") and writes the reply to standard
 * output. On failure writes one line to standard error and exits 1.
 */

#define _POSIX_C_SOURCE 200809L

#include "gaspar2.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *prog = "gaspar2-request";

static void usage(void)
{
    fprintf(stderr, "usage: %s [--timeout SECONDS] HOST:PORT|unix:PATH|unix:@NAME [MESSAGE]\n", prog);
    exit(2);
}

static void fail(const char *what, const char *why)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, why);
    exit(1);
}

static unsigned char *read_stdin(size_t *len)
{
    size_t cap = 65536, n;
    unsigned char *buf = malloc(cap);
    *len = 0;
    while (buf && (n = fread(buf + *len, 1, cap - *len, stdin)) > 0) {
        *len += n;
        if (*len == cap)
            buf = realloc(buf, cap *= 2);
    }
    if (!buf)
        fail("stdin", strerror(ENOMEM));
    if (ferror(stdin))
        fail("stdin", strerror(errno));
    return buf;
}

int main(int argc, char **argv)
{
    int timeout_ms = 0, i = 1;
    if (argc > 2 && strcmp(argv[1], "--timeout") == 0) {
        char *end;
        double seconds = strtod(argv[2], &end);
        if (*end || end == argv[2] || !(seconds >= 0))
            usage();
        timeout_ms = seconds * 1000 >= INT_MAX ? INT_MAX : (int)(seconds * 1000);
        if (seconds > 0 && timeout_ms == 0)
            timeout_ms = 1; /* 0 would mean no limit at all */
        i = 3;
    }
    if (argc - i < 1 || argc - i > 2)
        usage();
    const char *url = argv[i];

    /* unix:PATH and unix:@NAME go to the library as they are; HOST:PORT, or [IPv6]:PORT,
     * is split at the last colon. */
    int unix_socket = strncmp(url, "unix:", 5) == 0;
    if (unix_socket && (!url[5] || strcmp(url + 5, "@") == 0))
        usage();
    char *copy = unix_socket ? NULL : strdup(url);
    const char *host = url, *port = NULL;
    if (!unix_socket) {
        char *colon = copy ? strrchr(copy, ':') : NULL;
        if (!colon || !colon[1])
            usage();
        *colon = '\0';
        host = copy;
        port = colon + 1;
        size_t hlen = strlen(copy);
        if (hlen >= 2 && copy[0] == '[' && copy[hlen - 1] == ']') {
            copy[hlen - 1] = '\0';
            host = copy + 1;
        }
        if (!*host)
            host = "127.0.0.1";
    }

    unsigned char *msg;
    size_t len;
    if (argc - i == 2 && strcmp(argv[i + 1], "-") != 0) {
        msg = (unsigned char *)argv[i + 1];
        len = strlen(argv[i + 1]);
    } else {
        msg = read_stdin(&len);
    }

    unsigned char *reply;
    size_t reply_len;
    int rc = gaspar2_request(host, port, msg, len, &reply, &reply_len, timeout_ms);
    if (rc == GASPAR2_ESYSTEM)
        fail(url, strerror(errno));
    if (rc != GASPAR2_OK)
        fail(url, gaspar2_strerror(rc));
    if (fwrite(reply, 1, reply_len, stdout) != reply_len || fflush(stdout) != 0)
        fail("stdout", strerror(errno));
    return 0;
}

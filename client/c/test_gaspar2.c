/*
 * Tests of the C client against a live server, run by "make test".
 *
 * GASPAR2_TEST_URL is HOST:PORT of a server whose handler echoes every message, fails on
 * "fail" and sleeps SECONDS on "pid:SECONDS" (python -m gaspar2 serve tests.handlers:work,
 * from the repository's root); GASPAR2_TEST_URL6, if set, is the same on an IPv6 address,
 * GASPAR2_TEST_UNIX on a unix socket (unix:PATH) and GASPAR2_TEST_ABSTRACT on an abstract
 * one (unix:@NAME).
 */

#define _POSIX_C_SOURCE 200809L

#include "gaspar2.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int passed, failed;

static void check(int ok, const char *name)
{
    printf("%s - %s\n", ok ? "ok" : "not ok", name);
    if (ok)
        passed++;
    else
        failed++;
}

/* "host:port" or "[v6 address]:port" into host and port. */
static void split(const char *url, char *host, char *port)
{
    if (sscanf(url, "[%63[^]]]:%15s", host, port) != 2 &&
        sscanf(url, "%63[^:]:%15s", host, port) != 2) {
        fprintf(stderr, "cannot parse %s\n", url);
        exit(2);
    }
}

/* One request; the reply, if any, is compared with expect (expect_len bytes). */
static int call(const char *url, const void *msg, size_t len, int timeout_ms,
                const void *expect, size_t expect_len)
{
    char host[64], port[16];
    unsigned char *reply;
    size_t reply_len;
    int unix_socket = strncmp(url, "unix:", 5) == 0;
    if (!unix_socket)
        split(url, host, port);
    int rc = gaspar2_request(unix_socket ? url : host, unix_socket ? NULL : port, msg, len,
                             &reply, &reply_len, timeout_ms);
    if (rc == GASPAR2_OK) {
        int same = reply_len == expect_len && memcmp(reply, expect, expect_len) == 0 &&
                   reply[reply_len] == '\0';
        free(reply);
        return same ? GASPAR2_OK : 1;
    }
    return reply == NULL ? rc : 2;
}

static int echoes(const char *url, const void *msg, size_t len)
{
    return call(url, msg, len, 30000, msg, len) == GASPAR2_OK;
}

/* The port of a socket bound to 127.0.0.1, listening or not. */
static char *bound_port(int fd, int listening)
{
    static char port[16];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t size = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || (listening && listen(fd, 8) < 0) ||
        getsockname(fd, (struct sockaddr *)&addr, &size) < 0) {
        perror("bind");
        exit(2);
    }
    snprintf(port, sizeof port, "%u", ntohs(addr.sin_port));
    return port;
}

int main(void)
{
    const char *url = getenv("GASPAR2_TEST_URL"), *url6 = getenv("GASPAR2_TEST_URL6");
    if (!url || !*url) {
        printf("skipped: set GASPAR2_TEST_URL to HOST:PORT of a live test server\n");
        return 0;
    }
    unsigned char *reply;
    size_t reply_len;

    char number[16];
    snprintf(number, sizeof number, "%d.%d.%d", GASPAR2_VERSION_NUMBER >> 16,
             (GASPAR2_VERSION_NUMBER >> 8) & 0xff, GASPAR2_VERSION_NUMBER & 0xff);
    check(strcmp(number, GASPAR2_VERSION) == 0, "GASPAR2_VERSION_NUMBER matches GASPAR2_VERSION");

    check(echoes(url, "hello", 5), "text is echoed");
    check(echoes(url, "", 0), "an empty message gets an empty reply");
    unsigned char bytes[256 * 16];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (unsigned char)i;
    check(echoes(url, bytes, sizeof bytes), "every byte value is echoed");
    size_t big_len = 1 << 20;
    unsigned char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (unsigned char)(i * 7919 >> 3);
    check(big && echoes(url, big, big_len), "1 MiB is echoed");
    free(big);

    check(call(url, "fail", 4, 30000, NULL, 0) == GASPAR2_ERESET,
          "a failure on the server is GASPAR2_ERESET");
    check(call(url, "pid:0.5", 7, 100, NULL, 0) == GASPAR2_ETIMEOUT,
          "no reply within timeout_ms is GASPAR2_ETIMEOUT");

    int closed = socket(AF_INET, SOCK_STREAM, 0);
    char refused[32];
    snprintf(refused, sizeof refused, "127.0.0.1:%s", bound_port(closed, 0));
    check(call(refused, "anyone?", 7, 30000, NULL, 0) == GASPAR2_EREFUSED,
          "a port that does not listen is GASPAR2_EREFUSED");
    close(closed);

    check(gaspar2_request("127.0.0.1", "1", "", (size_t)UINT32_MAX + 1, &reply, &reply_len, 0) ==
              GASPAR2_ETOOBIG && reply == NULL,
          "a message over 4 GiB is GASPAR2_ETOOBIG");
    check(strstr(gaspar2_strerror(GASPAR2_ERESET), "connection reset") != NULL,
          "gaspar2_strerror describes a reset");

    if (url6 && *url6)
        check(echoes(url6, "over IPv6", 9), "a bracketed IPv6 address works");

    const char *unix_urls[] = {getenv("GASPAR2_TEST_UNIX"), getenv("GASPAR2_TEST_ABSTRACT")};
    for (int u = 0; u < 2; u++) {
        const char *at = unix_urls[u];
        if (!at || !*at)
            continue;
        char name[128];
        snprintf(name, sizeof name, "%s: a message is echoed", u ? "unix:@NAME" : "unix:PATH");
        check(echoes(at, at, strlen(at)), name);
        snprintf(name, sizeof name, "%s: an empty message gets an empty reply",
                 u ? "unix:@NAME" : "unix:PATH");
        check(echoes(at, "", 0), name);
        snprintf(name, sizeof name, "%s: a failure on the server is GASPAR2_ERESET",
                 u ? "unix:@NAME" : "unix:PATH");
        check(call(at, "fail", 4, 30000, NULL, 0) == GASPAR2_ERESET, name);
        snprintf(name, sizeof name, "%s: no reply within timeout_ms is GASPAR2_ETIMEOUT",
                 u ? "unix:@NAME" : "unix:PATH");
        check(call(at, "pid:0.5", 7, 100, NULL, 0) == GASPAR2_ETIMEOUT, name);
    }

    check(call("unix:/nonexistent/gaspar2.sock", "anyone?", 7, 30000, NULL, 0) ==
              GASPAR2_EREFUSED,
          "a unix socket's file that is not there is GASPAR2_EREFUSED");
    /* A socket file nobody listens on (bound, never listening) refuses connections. */
    char stale[] = "/tmp/gaspar2-test-XXXXXX";
    if (mkdtemp(stale)) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s/stale.sock", stale);
        int bound = socket(AF_UNIX, SOCK_STREAM, 0);
        char stale_url[sizeof sun.sun_path + 8];
        snprintf(stale_url, sizeof stale_url, "unix:%s", sun.sun_path);
        check(bind(bound, (struct sockaddr *)&sun, sizeof sun) == 0 &&
                  call(stale_url, "anyone?", 7, 30000, NULL, 0) == GASPAR2_EREFUSED,
              "a unix socket nobody listens on is GASPAR2_EREFUSED");
        close(bound);
        unlink(sun.sun_path);
        rmdir(stale);
    }
    char abstract[64];
    snprintf(abstract, sizeof abstract, "unix:@gaspar2-test-nobody-%ld", (long)getpid());
    check(call(abstract, "anyone?", 7, 30000, NULL, 0) == GASPAR2_EREFUSED,
          "an abstract name nobody listens on is GASPAR2_EREFUSED");
    char long_path[200] = "unix:/";
    memset(long_path + 6, 'x', sizeof long_path - 7);
    long_path[sizeof long_path - 1] = '\0';
    check(call(long_path, "x", 1, 30000, NULL, 0) == GASPAR2_ESYSTEM,
          "a unix socket path too long for sockaddr_un is GASPAR2_ESYSTEM");

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

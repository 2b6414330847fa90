/* gaspar2 client for C. See gaspar2.h. */

#define _POSIX_C_SOURCE 200809L
#define _DARWIN_C_SOURCE /* SO_NOSIGPIPE on macOS */

#include "gaspar2.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* where it is missing, SO_NOSIGPIPE is set on the socket instead */
#endif

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int from_errno(int err)
{
    switch (err) {
    case ECONNRESET:
    case EPIPE: /* the reset was already reported to an earlier call */
        return GASPAR2_ERESET;
    case ECONNREFUSED:
    case ENOENT: /* a unix socket's file that is not there: nothing listens */
        return GASPAR2_EREFUSED;
    case ETIMEDOUT:
        return GASPAR2_ETIMEOUT;
    default:
        return GASPAR2_ESYSTEM;
    }
}

/* Wait until fd is ready for events or the deadline (0: none) has passed. */
static int wait_ready(int fd, short events, long long deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int ms = -1;
        if (deadline) {
            long long left = deadline - now_ms();
            if (left <= 0)
                return GASPAR2_ETIMEOUT;
            ms = left > INT_MAX ? INT_MAX : (int)left;
        }
        int n = poll(&p, 1, ms);
        if (n > 0)
            return 0; /* readiness includes errors: the next call reports them */
        if (n < 0 && errno != EINTR)
            return GASPAR2_ESYSTEM;
    }
}

/* connect() on a non-blocking socket; 0, or a GASPAR2_E* with errno set. */
static int start_connect(int fd, const struct sockaddr *addr, socklen_t addrlen,
                         long long deadline)
{
    for (;;) {
        if (connect(fd, addr, addrlen) == 0)
            return 0;
        if (errno == EINPROGRESS)
            break;
        if (errno != EAGAIN)
            return from_errno(errno);
        /* A unix socket whose listener's backlog is full says EAGAIN rather than
         * EINPROGRESS: try again until the deadline, as a blocking connect() would wait. */
        long long left = deadline ? deadline - now_ms() : 10;
        if (left <= 0)
            return GASPAR2_ETIMEOUT;
        poll(NULL, 0, left < 10 ? (int)left : 10);
    }
    int rc = wait_ready(fd, POLLOUT, deadline);
    if (rc)
        return rc;
    int err = 0;
    socklen_t size = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &size) < 0)
        err = errno;
    if (err) {
        errno = err;
        return from_errno(err);
    }
    return 0;
}

static int connect_to(int family, const struct sockaddr *addr, socklen_t addrlen,
                      long long deadline, int *fdp)
{
    int fd = socket(family, SOCK_STREAM, 0);
    if (fd < 0)
        return GASPAR2_ESYSTEM;
    /* Non-blocking, so that every wait goes through poll() and respects the deadline. */
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
#ifdef SO_NOSIGPIPE
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    int rc = start_connect(fd, addr, addrlen, deadline);
    if (rc) {
        int saved = errno;
        close(fd);
        errno = saved;
        return rc;
    }
    *fdp = fd;
    return 0;
}

/* "unix:PATH" or "unix:@NAME" (Linux's abstract namespace) into a sockaddr_un. */
static int unix_address(const char *address, struct sockaddr_un *sun, socklen_t *len)
{
    const char *path = address + 5;
    int abstract = path[0] == '@';
    size_t n = strlen(path + abstract);
    if (n == 0)
        return GASPAR2_ERESOLVE;
    if (n + 1 > sizeof sun->sun_path) {
        errno = ENAMETOOLONG;
        return GASPAR2_ESYSTEM;
    }
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    if (abstract) {
        /* A NUL, then the name; the length says where the name ends. */
        memcpy(sun->sun_path + 1, path + 1, n);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    } else {
        memcpy(sun->sun_path, path, n + 1);
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    return 0;
}

/* Connect to host:port (every address it resolves to, in turn) or to a unix socket. */
static int open_connection(const char *host, const char *port, long long deadline, int *fdp)
{
    if (strncmp(host, "unix:", 5) == 0) {
        struct sockaddr_un sun;
        socklen_t len;
        int rc = unix_address(host, &sun, &len);
        return rc ? rc : connect_to(AF_UNIX, (struct sockaddr *)&sun, len, deadline, fdp);
    }
    struct addrinfo hints, *found, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (!port || getaddrinfo(host, port, &hints, &found) != 0)
        return GASPAR2_ERESOLVE;
    int rc = GASPAR2_ERESOLVE;
    for (ai = found; ai; ai = ai->ai_next) {
        rc = connect_to(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline, fdp);
        if (rc == 0 || rc == GASPAR2_ETIMEOUT)
            break;
    }
    int saved = errno;
    freeaddrinfo(found);
    errno = saved;
    return rc;
}

static int send_all(int fd, const unsigned char *p, size_t len, long long deadline)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n >= 0) {
            p += n;
            len -= (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = wait_ready(fd, POLLOUT, deadline);
            if (rc)
                return rc;
        } else if (errno != EINTR) {
            return from_errno(errno);
        }
    }
    return 0;
}

/* Read to EOF into a malloc'ed, NUL-terminated buffer. */
static int recv_all(int fd, unsigned char **out, size_t *out_len, long long deadline)
{
    size_t cap = 4096, len = 0;
    unsigned char *buf = malloc(cap);
    if (!buf)
        return GASPAR2_ESYSTEM;
    for (;;) {
        if (cap - len < 2) {
            unsigned char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                return GASPAR2_ESYSTEM;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
            continue;
        }
        if (n == 0)
            break; /* orderly close: the reply is complete */
        int rc = 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            rc = wait_ready(fd, POLLIN, deadline);
        else if (errno != EINTR)
            rc = from_errno(errno); /* a reset, even after part of a reply, is a failure */
        if (rc) {
            int saved = errno;
            free(buf);
            errno = saved;
            return rc;
        }
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

int gaspar2_request(const char *host, const char *port, const void *msg, size_t len,
                    unsigned char **reply, size_t *reply_len, int timeout_ms)
{
    *reply = NULL;
    *reply_len = 0;
    if (len > UINT32_MAX)
        return GASPAR2_ETOOBIG;
    long long deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;

    /* Length and payload in one buffer, so they leave in one write rather than two. */
    unsigned char *frame = malloc(4 + len);
    if (!frame)
        return GASPAR2_ESYSTEM;
    uint32_t size = htonl((uint32_t)len);
    memcpy(frame, &size, 4);
    if (len)
        memcpy(frame + 4, msg, len);

    int fd = -1, rc = open_connection(host, port, deadline, &fd);
    if (rc == 0) {
        rc = send_all(fd, frame, 4 + len, deadline);
        if (rc == 0) {
            /* Half-close: the request is complete. Should it fail, recv reports why. */
            shutdown(fd, SHUT_WR);
            rc = recv_all(fd, reply, reply_len, deadline);
        }
        int saved = errno;
        close(fd);
        errno = saved;
    }
    free(frame);
    return rc;
}

const char *gaspar2_strerror(int result)
{
    switch (result) {
    case GASPAR2_OK:
        return "success";
    case GASPAR2_ERESET:
        return "connection reset: the request failed on the server (see its log)";
    case GASPAR2_EREFUSED:
        return "connection refused: is the server running?";
    case GASPAR2_ETIMEOUT:
        return "timed out";
    case GASPAR2_ERESOLVE:
        return "cannot resolve the host or port";
    case GASPAR2_ETOOBIG:
        return "message too long for a 4-byte length";
    default:
        return "socket or memory error";
    }
}

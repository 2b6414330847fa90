/* c_echo_server: the protocol's ceiling on this machine.
 *
 * A minimal single-threaded epoll server: read one frame (4-byte big-endian length, then the
 * payload), write the payload back, close. No handler, no Python: what is left is the cost
 * of the kernel's TCP work for one connection per request.
 *
 *   c_echo_server [--host 127.0.0.1] [--port PORT] [--backlog N]
 *
 * Logs "serving on HOST:PORT" to stderr once listening (--port 0 picks a free port).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    int fd, writing;
    size_t got, need, sent;   /* need: 4 until the header is in, then 4 + length */
    char *buf;
    size_t cap;
} conn_t;

static int ep;

static void drop(conn_t *c) {
    close(c->fd);
    free(c->buf);
    free(c);
}

static int watch(conn_t *c, uint32_t events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    return epoll_ctl(ep, op, c->fd, &e);
}

/* Send what the socket takes; close once the whole payload is out. */
static void on_writable(conn_t *c) {
    while (c->sent < c->need - 4) {
        ssize_t w = send(c->fd, c->buf + 4 + c->sent, c->need - 4 - c->sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            if (!c->writing && watch(c, EPOLLOUT, EPOLL_CTL_MOD) < 0) return drop(c);
            c->writing = 1;
            return;
        }
        if (w < 0) return drop(c);
        c->sent += w;
    }
    drop(c);
}

static int grow(conn_t *c, size_t cap) {
    char *b = realloc(c->buf, cap);
    if (!b) return -1;
    c->buf = b;
    c->cap = cap;
    return 0;
}

/* Read until the frame is complete or the socket would block. */
static void on_readable(conn_t *c) {
    while (c->got < c->need) {
        ssize_t r = recv(c->fd, c->buf + c->got, c->cap - c->got, 0);
        if (r < 0 && errno == EAGAIN) return;
        if (r <= 0) return drop(c);     /* EOF before a whole frame, or an error */
        c->got += r;
        if (c->need == 4 && c->got >= 4) {
            uint32_t n;
            memcpy(&n, c->buf, 4);
            c->need = 4 + (size_t)ntohl(n);
            if (c->need > c->cap && grow(c, c->need) < 0) return drop(c);
        }
    }
    on_writable(c);
}

static void on_accept(int lfd) {
    for (int i = 0; i < 256; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        conn_t *c = calloc(1, sizeof *c);
        c->fd = fd;
        c->need = 4;
        c->cap = 4096;
        c->buf = malloc(c->cap);
        if (watch(c, EPOLLIN, EPOLL_CTL_ADD) < 0) drop(c);
    }
}

static int listen_on(const char *host, int port, int backlog) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    socklen_t len = sizeof a;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
        listen(fd, backlog) || getsockname(fd, (struct sockaddr *)&a, &len)) {
        perror("c_echo_server: listen");
        exit(1);
    }
    fprintf(stderr, "c_echo_server serving on %s:%d\n", host, ntohs(a.sin_port));
    return fd;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, backlog = 2048;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--host")) host = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--backlog")) backlog = atoi(argv[i + 1]);
    }
    signal(SIGPIPE, SIG_IGN);
    int lfd = listen_on(host, port, backlog);
    ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL}, events[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &e);
    for (;;) {                          /* runs until a signal (SIGTERM) ends the process */
        int k = epoll_wait(ep, events, 512, -1);
        for (int i = 0; i < k; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c) on_accept(lfd);
            else if (c->writing) on_writable(c);
            else on_readable(c);
        }
    }
}

/* A gaspar2 worker in C: it echoes each request, and fails those that start with "fail".
 * Build: cc -O2 -o echo-worker echo-worker.c   Serve: gaspar2 serve --exec ./echo-worker */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_exactly(void *buf, size_t len)
{
    return len == 0 || fread(buf, 1, len, stdin) == len;
}

static void answer(unsigned char kind, const void *body, uint32_t len)
{
    uint32_t n = htonl(len);
    fputc(kind, stdout);                /* 0: a reply, 1: this request failed */
    fwrite(&n, 4, 1, stdout);
    fwrite(body, 1, len, stdout);
    fflush(stdout);
}

int main(void)
{
    uint32_t n;
    while (read_exactly(&n, 4)) {       /* end of file: gaspar2 is done with us */
        uint32_t len = ntohl(n);
        unsigned char *request = malloc(len ? len : 1);
        if (request == NULL || !read_exactly(request, len))
            return 1;
        if (len >= 4 && memcmp(request, "fail", 4) == 0) {
            const char *why = "this example fails requests that start with 'fail'";
            answer(1, why, strlen(why));
        } else {
            answer(0, request, len);
        }
        free(request);
    }
    return 0;
}

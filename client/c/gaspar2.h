/*
 * gaspar2 client for C: one request per connection.
 *
 * The request is a 4-byte big-endian length and the payload; the reply is everything the
 * server writes before closing. A failed request is a connection reset, never an empty
 * reply. Servers are reached over TCP or over unix sockets (see gaspar2_request()).
 */
#ifndef GASPAR2_H
#define GASPAR2_H

#include <stddef.h>

/* The version of this library, as a string and as one comparable number (0x00MMmmpp). */
#define GASPAR2_VERSION "0.1.0"
#define GASPAR2_VERSION_NUMBER 0x000100


#ifdef __cplusplus
extern "C" {
#endif

/* Results of gaspar2_request(): 0 on success, one of these on failure. */
enum {
    GASPAR2_OK = 0,
    GASPAR2_ERESET = -1,    /* the server reset the connection: the request failed there */
    GASPAR2_EREFUSED = -2,  /* nothing listens at host:port (or no unix socket's file there) */
    GASPAR2_ETIMEOUT = -3,  /* no complete reply within timeout_ms */
    GASPAR2_ERESOLVE = -4,  /* host or port cannot be resolved (or "unix:" names nothing) */
    GASPAR2_ESYSTEM = -5,   /* any other socket or memory error: errno says which */
    GASPAR2_ETOOBIG = -6    /* message longer than the 4-byte length can say */
};

/*
 * Send msg (len bytes, any content) to the server at host:port and wait for the reply.
 * host may instead be "unix:PATH", a unix socket's file, or "unix:@NAME", a socket in
 * Linux's abstract namespace; port is then ignored (pass NULL). A unix socket's file that
 * does not exist is GASPAR2_EREFUSED, like a socket nobody listens on; a path too long for
 * a sockaddr_un (107 bytes on Linux) is GASPAR2_ESYSTEM with errno ENAMETOOLONG.
 * On success returns 0 and sets *reply to a malloc'ed buffer of *reply_len bytes (plus a
 * terminating NUL that is not counted), which the caller frees; an empty reply is a
 * success too. On failure returns a negative GASPAR2_E* and sets *reply to NULL.
 * timeout_ms bounds the whole request; 0 or less means no limit.
 */
int gaspar2_request(const char *host, const char *port, const void *msg, size_t len,
                    unsigned char **reply, size_t *reply_len, int timeout_ms);

/* A short English description of a gaspar2_request() result. */
const char *gaspar2_strerror(int result);

#ifdef __cplusplus
}
#endif

#endif

/* cs-healthcheck: the container image's HEALTHCHECK probe.
 *
 *   cs-healthcheck [http://IPV4:PORT/PATH]     default http://127.0.0.1:8000/-/healthz
 *
 * Exit 0 when the server answers 200, 1 otherwise (refused, timed out, any other status),
 * 2 on a bad argument. The final image has no shell and no curl, and cserve's own binary has no
 * client subcommand, so this is the one extra file it carries (~16 kB, libc only). Plain HTTP/1.0
 * to a numeric IPv4 address: no DNS, no TLS, nothing the probe could hang on past its timeouts.
 * Single-threaded; a process per probe, so nothing is freed explicitly. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define HC_TIMEOUT_S 3    /* per connect/send/receive: docker's default probe timeout is 30 s */
#define HC_MAX_URL 512    /* longest URL argument accepted */
#define HC_MAX_HEAD 64    /* bytes of the response read: the status line is all we need */

/* Splits "http://A.B.C.D:PORT/PATH" into its parts; returns -1 if it is not that shape. */
static int hc_parse(const char *url, struct sockaddr_in *sa, const char **path) {
    static const char scheme[] = "http://";
    char host[64];
    if (strlen(url) > HC_MAX_URL || strncmp(url, scheme, sizeof scheme - 1) != 0) return -1;
    const char *h = url + sizeof scheme - 1;
    const char *colon = strchr(h, ':');
    if (!colon || (size_t)(colon - h) >= sizeof host) return -1;
    memcpy(host, h, (size_t)(colon - h));
    host[colon - h] = '\0';
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno || end == colon + 1 || port < 1 || port > 65535 || (*end && *end != '/')) return -1;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) return -1;
    *path = *end ? end : "/";
    return 0;
}

int main(int argc, char **argv) {
    const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:8000/-/healthz";
    struct sockaddr_in sa;
    const char *path;
    if (argc > 2 || hc_parse(url, &sa, &path) != 0) {
        fprintf(stderr, "usage: cs-healthcheck [http://IPV4:PORT/PATH]\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 1;
    /* SO_SNDTIMEO also bounds a blocking connect() on Linux. */
    struct timeval tv = {.tv_sec = HC_TIMEOUT_S, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        fprintf(stderr, "cs-healthcheck: %s: %s\n", url, strerror(errno));
        return 1;
    }
    char req[HC_MAX_URL + 64];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) return 1;
    char head[HC_MAX_HEAD + 1];
    size_t got = 0;
    while (got < HC_MAX_HEAD) {
        ssize_t r = recv(fd, head + got, HC_MAX_HEAD - got, 0);
        if (r <= 0) break;
        got += (size_t)r;
    }
    head[got] = '\0';
    close(fd);
    /* "HTTP/1.x 200 ..." */
    if (got >= 12 && strncmp(head, "HTTP/1.", 7) == 0 && strncmp(head + 8, " 200", 4) == 0) return 0;
    char *eol = strpbrk(head, "\r\n");
    if (eol) *eol = '\0';
    fprintf(stderr, "cs-healthcheck: %s: %s\n", url, got ? head : "no response");
    return 1;
}

/*
 * ezrunner-probe: the HEALTHCHECK of images that have neither python nor curl (the llama.cpp image).
 *
 *   ezrunner-probe [-p PORT] [-t SECONDS] [PATH]
 *
 * Sends `GET PATH HTTP/1.0` (default /health) to 127.0.0.1:PORT (default: $PORT, else 8080) and exits 0
 * only when the status line says 200; any other status, a refused or timed-out connection, or a reply that
 * is not HTTP exits 1 (Docker reads 1 as unhealthy and reserves 2). The whole probe, connect included, is
 * bounded by SECONDS (default 4, under the template's `HEALTHCHECK --timeout=5s`). One line saying what
 * happened goes to stdout, which Docker keeps in the container's Health log.
 *
 * Built statically (`cc -static`) so that it runs in any base image. No resolver: the address is numeric.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEALTHY 0
#define UNHEALTHY 1

static void on_deadline(int signum) {
    (void)signum;
    static const char message[] = "ezrunner-probe: no answer in time\n";
    ssize_t ignored = write(STDOUT_FILENO, message, sizeof message - 1);
    (void)ignored;
    _exit(UNHEALTHY);
}

static int parse_number(const char *text, long low, long high, long *out) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < low || value > high) {
        return -1;
    }
    *out = value;
    return 0;
}

static void usage(void) {
    puts("usage: ezrunner-probe [-p PORT] [-t SECONDS] [PATH]  (PORT defaults to $PORT, else 8080)");
}

int main(int argc, char **argv) {
    const char *port_text = getenv("PORT");
    const char *path = "/health";
    long port = 8080;
    long timeout_s = 4;

    int opt;
    while ((opt = getopt(argc, argv, "p:t:h")) != -1) {
        switch (opt) {
        case 'p':
            port_text = optarg;
            break;
        case 't':
            if (parse_number(optarg, 1, 3600, &timeout_s) != 0) {
                printf("ezrunner-probe: bad timeout %s\n", optarg);
                return UNHEALTHY;
            }
            break;
        case 'h':
            usage();
            return HEALTHY;
        default:
            usage();
            return UNHEALTHY;
        }
    }
    if (optind < argc) {
        path = argv[optind];
    }
    if (path[0] != '/' || strpbrk(path, " \r\n") != NULL || strlen(path) > 1024) {
        printf("ezrunner-probe: bad path %s\n", path);
        return UNHEALTHY;
    }
    if (port_text != NULL && port_text[0] != '\0' && parse_number(port_text, 1, 65535, &port) != 0) {
        printf("ezrunner-probe: bad port %s\n", port_text);
        return UNHEALTHY;
    }

    /* One deadline for connect, send and receive: a server that accepts and then hangs is unhealthy too. */
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_deadline;
    sigemptyset(&action.sa_mask);
    sigaction(SIGALRM, &action, NULL);
    alarm((unsigned)timeout_s);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        printf("ezrunner-probe: socket: %s\n", strerror(errno));
        return UNHEALTHY;
    }
    struct sockaddr_in address;
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        printf("ezrunner-probe: 127.0.0.1:%ld: %s\n", port, strerror(errno));
        return UNHEALTHY;
    }

    /* HTTP/1.0 with Connection: close: the reply is never chunked and the server closes when done. */
    char request[1200];
    int length = snprintf(request, sizeof request,
                          "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%ld\r\nUser-Agent: ezrunner-probe\r\n"
                          "Connection: close\r\n\r\n",
                          path, port);
    for (int sent = 0; sent < length;) {
        ssize_t n = send(fd, request + sent, (size_t)(length - sent), MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            printf("ezrunner-probe: send: %s\n", strerror(errno));
            return UNHEALTHY;
        }
        sent += (int)n;
    }

    /* Only the status line matters: "HTTP/1.x 200 ...". */
    char reply[256];
    size_t have = 0;
    while (have < sizeof reply - 1 && memchr(reply, '\n', have) == NULL) {
        ssize_t n = recv(fd, reply + have, sizeof reply - 1 - have, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            printf("ezrunner-probe: recv: %s\n", strerror(errno));
            return UNHEALTHY;
        }
        if (n == 0) {
            break;
        }
        have += (size_t)n;
    }
    close(fd);
    reply[have] = '\0';
    reply[strcspn(reply, "\r\n")] = '\0';

    /* "HTTP/1.0 " or "HTTP/1.1 ", three digits, then a space or the end of the line */
    int is_http = strncmp(reply, "HTTP/1.", 7) == 0 && reply[7] >= '0' && reply[7] <= '9' && reply[8] == ' ';
    for (int i = 9; is_http && i < 12; i++) {
        is_http = reply[i] >= '0' && reply[i] <= '9';
    }
    is_http = is_http && (reply[12] == ' ' || reply[12] == '\0');
    if (!is_http) {
        printf("ezrunner-probe: 127.0.0.1:%ld%s: not an HTTP reply: \"%.80s\"\n", port, path, reply);
        return UNHEALTHY;
    }
    printf("ezrunner-probe: 127.0.0.1:%ld%s: %s\n", port, path, reply);
    return strncmp(reply + 9, "200", 3) == 0 ? HEALTHY : UNHEALTHY;
}

/* bench/peers/floor.c — the floor: a ruler, not a server (issue 15).
 *
 * The least a keep-alive HTTP/1.1 responder can do per request on this
 * kernel: one epoll_wait per batch of ready sockets, one recv per readable
 * socket, one send per recv. No parsing: it counts the requests in what it
 * read by the "\r\n\r\n" that ends each head (state carried across reads, so a
 * head split over two reads counts once), and answers all of them with ONE send
 * of that many copies of a fixed response (pipelining: 16 requests in a read,
 * 16 responses in one send). Requests with bodies are not understood (a body is
 * never expected here: GET / only). Single thread, level-triggered epoll.
 * Whatever any server spends above this per request is its own work; the
 * kernel's loopback TCP path (most of the floor) is the same for everyone.
 *
 * Build (bench/lib.sh does this): gcc -O2 -o floor floor.c
 * Run:   floor 127.0.0.1 PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "floor.h"

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: floor ADDR PORT\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  fill_out();
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 65535)) { perror("bind/listen"); return 1; }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[512];
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  char buf[65536];
  for (;;) {
    int n = epoll_wait(ep, evs, 512, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int c;
        while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          if (c >= MAXFD) { close(c); continue; }
          setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          match[c] = 0;
          struct epoll_event ce = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
        }
        continue;
      }
      ssize_t r = recv(fd, buf, sizeof buf, 0);
      if (r <= 0) {
        if (r < 0 && errno == EAGAIN) continue;
        close(fd); /* also removes it from the epoll set */
        continue;
      }
      int reqs = count_heads(fd, buf, r);
      while (reqs > 0) {
        int b = reqs < MAXBATCH ? reqs : MAXBATCH;
        /* Blocking would be wrong, but a full send buffer cannot happen with a
         * closed-loop client that waits for its replies; on a short send the
         * connection is closed (a ruler, not a server). */
        if (send(fd, out, b * RLEN, 0) != (ssize_t)(b * RLEN)) { close(fd); break; }
        reqs -= b;
      }
    }
  }
}

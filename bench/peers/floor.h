/* bench/peers/floor.h — what the two floors (floor.c over epoll, floor-uring.c
 * over io_uring) share, so that they differ only in how they reach the kernel:
 * the fixed response, its batch of copies for pipelined reads, and the count
 * of complete request heads in what a read brought. */
#ifndef MEGACONN_BENCH_FLOOR_H
#define MEGACONN_BENCH_FLOOR_H

#include <string.h>
#include <sys/types.h>

/* Same body and about the same head as the other peers' "Hello, World!". */
static const char RESP[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\nHello, World!";
#define RLEN (sizeof(RESP) - 1)
#define MAXFD 65536
#define MAXBATCH 256 /* responses per send; more requests in one read: looped */

static unsigned char match[MAXFD]; /* bytes of "\r\n\r\n" matched so far, per fd */
static char out[MAXBATCH * RLEN];  /* MAXBATCH copies of RESP, see fill_out */

static void fill_out(void) {
  for (int i = 0; i < MAXBATCH; i++) memcpy(out + i * RLEN, RESP, RLEN);
}

/* The complete request heads in buf[0..n) ("\r\n\r\n" ends each), the state
 * carried across reads of fd, so a head split over two reads counts once. */
static int count_heads(int fd, const char *buf, ssize_t n) {
  int m = match[fd], reqs = 0;
  for (ssize_t k = 0; k < n; k++) {
    char ch = buf[k];
    if (ch == ((m & 1) ? '\n' : '\r')) { if (++m == 4) { reqs++; m = 0; } }
    else m = (ch == '\r');
  }
  match[fd] = m;
  return reqs;
}

#endif

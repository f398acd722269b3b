/* bench/peers/floor-uring.c — the floor again, over io_uring: a ruler for what
 * an io_uring hot loop could save (issue 15). Not a server.
 *
 * floor.c makes three kinds of system call: one epoll_wait per batch of ready
 * sockets, then one recv and one send per readable socket. Here the same work
 * costs ONE io_uring_enter per batch, whatever the batch holds:
 *   - a multishot accept on the listener;
 *   - a multishot recv per connection, its buffers picked by the kernel from a
 *     provided-buffer ring, so a connection is never re-armed after a read and
 *     has no buffer of its own while it waits;
 *   - one send per read, queued in the ring and submitted with the next wait.
 * The ring is set up SINGLE_ISSUER | DEFER_TASKRUN (completion work runs when
 * this thread enters the kernel, not by interrupting it), falling back to no
 * flags on a kernel without them. Requests are counted exactly as floor.c does
 * (the "\r\n\r\n" that ends each head, state carried across reads) and answered
 * with one send of that many copies of the same fixed response.
 *
 * Build (bench/lib.sh does this; needs liburing-dev):
 *   gcc -O2 -o floor-uring floor-uring.c -luring
 * Run:   floor-uring 127.0.0.1 PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "floor.h"

#define NBUF 1024    /* provided receive buffers (a power of two) */
#define BUFSZ 4096
#define BGID 0

enum { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
#define UD(op, fd) (((unsigned long long)(fd) << 8) | (op))

static struct io_uring ring;

/* A free submission slot; a full queue is submitted first. */
static struct io_uring_sqe *sqe_get(void) {
  struct io_uring_sqe *s = io_uring_get_sqe(&ring);
  if (!s) {
    io_uring_submit(&ring);
    s = io_uring_get_sqe(&ring);
  }
  return s;
}

static void arm_accept(int ls) {
  struct io_uring_sqe *s = sqe_get();
  io_uring_prep_multishot_accept(s, ls, NULL, NULL, 0);
  io_uring_sqe_set_data64(s, UD(OP_ACCEPT, ls));
}

static void arm_recv(int fd) {
  struct io_uring_sqe *s = sqe_get();
  io_uring_prep_recv_multishot(s, fd, NULL, 0, 0);
  s->flags |= IOSQE_BUFFER_SELECT;
  s->buf_group = BGID;
  io_uring_sqe_set_data64(s, UD(OP_RECV, fd));
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: floor-uring ADDR PORT\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  fill_out();
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
  inet_pton(AF_INET, argv[1], &a.sin_addr);
  if (bind(ls, (void *)&a, sizeof a) || listen(ls, 65535)) { perror("bind/listen"); return 1; }

  struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
  int e = io_uring_queue_init_params(4096, &ring, &p);
  if (e < 0) {
    memset(&p, 0, sizeof p);
    e = io_uring_queue_init_params(4096, &ring, &p);
  }
  if (e < 0) { fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-e)); return 1; }

  /* The provided-buffer ring: NBUF buffers the kernel hands to reads. */
  struct io_uring_buf_ring *br;
  char *bufs = malloc((size_t)NBUF * BUFSZ);
  if (posix_memalign((void **)&br, 4096, NBUF * sizeof(struct io_uring_buf)) || !bufs) {
    fprintf(stderr, "out of memory\n");
    return 1;
  }
  struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = BGID};
  if ((e = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) {
    fprintf(stderr, "io_uring_register_buf_ring: %s\n", strerror(-e));
    return 1;
  }
  io_uring_buf_ring_init(br);
  int mask = io_uring_buf_ring_mask(NBUF);
  for (int i = 0; i < NBUF; i++) io_uring_buf_ring_add(br, bufs + (size_t)i * BUFSZ, BUFSZ, i, mask, i);
  io_uring_buf_ring_advance(br, NBUF);

  arm_accept(ls);
  for (;;) {
    /* The one system call per batch: submits what the last batch queued
     * (sends, re-arms) and waits for at least one completion. */
    e = io_uring_submit_and_wait(&ring, 1);
    if (e < 0 && e != -EINTR && e != -EAGAIN && e != -EBUSY) {
      fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-e));
      return 1;
    }
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      unsigned long long ud = io_uring_cqe_get_data64(cqe);
      int op = (int)(ud & 0xff), fd = (int)(ud >> 8), res = cqe->res;
      int more = cqe->flags & IORING_CQE_F_MORE;
      if (op == OP_ACCEPT) {
        if (res >= 0) {
          if (res >= MAXFD) { close(res); }
          else {
            setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            match[res] = 0;
            arm_recv(res);
          }
        }
        if (!more) arm_accept(ls);
      } else if (op == OP_RECV) {
        if (res > 0) {
          int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
          char *buf = bufs + (size_t)bid * BUFSZ;
          int reqs = count_heads(fd, buf, res);
          io_uring_buf_ring_add(br, buf, BUFSZ, bid, mask, 0);
          io_uring_buf_ring_advance(br, 1);
          while (reqs > 0) {
            int b = reqs < MAXBATCH ? reqs : MAXBATCH;
            struct io_uring_sqe *s = sqe_get();
            /* A closed-loop client waits for its replies, so the send never
             * finds a full buffer; a short or failed send is not handled (a
             * ruler, not a server). */
            io_uring_prep_send(s, fd, out, b * RLEN, 0);
            io_uring_sqe_set_data64(s, UD(OP_SEND, fd));
            reqs -= b;
          }
          if (!more) arm_recv(fd);
        } else if (res == -ENOBUFS) {
          arm_recv(fd); /* every buffer was in use: try again */
        } else {
          close(fd); /* end of stream or an error: the multishot recv is over */
        }
      }
      /* OP_SEND: nothing to do. */
    }
    io_uring_cq_advance(&ring, seen);
  }
}

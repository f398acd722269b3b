/* bench/peers/syscall-cost.c — a ruler (issue 15): what entering the kernel
 * costs on this machine, apart from any work. CPU time (not wall) per call of
 *   getppid()                      the bare syscall entry and exit;
 *   recv() on an empty socket      the entry/exit plus the socket's EAGAIN
 *                                  path: what a read that finds nothing costs;
 *   send()+recv() of 1 byte        a loopback round trip within one process,
 *                                  two calls, for scale.
 * What an io_uring submission path could save per request is at most the
 * entries and exits it avoids (recv + send, ~2 per request, less one
 * io_uring_enter per batch): the kernel's TCP work is the same either way.
 *
 * Build: gcc -O2 -o syscall-cost syscall-cost.c   Run: syscall-cost [N]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 2000000;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv)) { perror("socketpair"); return 1; }
  char b = 'x';
  volatile long sink = 0;
  double t0 = cpu_ns();
  for (long i = 0; i < n; i++) sink += getppid();
  double t1 = cpu_ns();
  for (long i = 0; i < n; i++) sink += recv(sv[0], &b, 1, 0);
  double t2 = cpu_ns();
  for (long i = 0; i < n; i++) { sink += send(sv[1], &b, 1, 0); sink += recv(sv[0], &b, 1, 0); }
  double t3 = cpu_ns();
  printf("getppid %.0f ns/call\nrecv EAGAIN %.0f ns/call\nsend+recv 1 byte (unix socket) %.0f ns/pair\n",
         (t1 - t0) / n, (t2 - t1) / n, (t3 - t2) / n);
  return (int)(sink & 0);
}

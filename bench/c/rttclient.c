/* Benchmark client: GET_FEATURES round trips (p50/p99) and pipelined requests/s against a vhost-user socket.
 * Written in C so the client's own overhead does not hide the relay's. usage: rttclient PATH ROUNDS PIPELINED */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

static double now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

/* Read exactly n bytes. */
static int full(int fd, unsigned char *b, int n) {
  for (int got = 0; got < n;) { int r = read(fd, b + got, n - got); if (r <= 0) return -1; got += r; }
  return 0;
}
/* One reply: 12-byte header then its payload. */
static int reply(int fd) {
  unsigned char h[12], p[4096];
  if (full(fd, h, 12)) return -1;
  unsigned size = h[8] | h[9] << 8 | h[10] << 16 | (unsigned)h[11] << 24;
  if (size > sizeof p) return -1;
  return full(fd, p, size);
}

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: rttclient PATH ROUNDS PIPELINED\n"); return 2; }
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
  const unsigned char req[12] = {1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}; /* GET_FEATURES, version 1, no payload */
  int rounds = atoi(argv[2]), pipelined = atoi(argv[3]), warm = 200;
  double *v = malloc(sizeof(double) * rounds);
  for (int i = 0; i < rounds + warm; i++) {
    double t0 = now_us();
    if (write(fd, req, 12) != 12 || reply(fd)) { fprintf(stderr, "connection lost\n"); return 1; }
    if (i >= warm) v[i - warm] = now_us() - t0;
  }
  qsort(v, rounds, sizeof(double), cmp);
  double t0 = now_us();
  int sent = 0, got = 0, window = 32;
  while (got < pipelined) {
    while (sent < pipelined && sent - got < window) { if (write(fd, req, 12) != 12) return 1; sent++; }
    if (reply(fd)) return 1;
    got++;
  }
  double secs = (now_us() - t0) / 1e6;
  printf("{\"p50\":%.2f,\"p99\":%.2f,\"pipelinedPerSec\":%.0f}\n", v[rounds / 2], v[rounds * 99 / 100], pipelined / secs);
  return 0;
}

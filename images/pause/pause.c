/* The real node's pause (sandbox) container: it holds the pod's namespaces and does nothing else.
 * No registry is reachable from the test bed, so registry.k8s.io/pause cannot be pulled; this is
 * built statically and committed into an image from scratch by hack/node.sh. It ends on SIGINT or
 * SIGTERM and reaps nothing: the containers of a pod are the runtime's children, not its. */
#include <signal.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

int main(void) {
  signal(SIGINT, stop);
  signal(SIGTERM, stop);
  for (;;) pause();
}

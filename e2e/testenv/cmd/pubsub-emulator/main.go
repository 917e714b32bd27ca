// Command pubsub-emulator serves the Pub/Sub gRPC API from Google's pstest fake
// on a fixed address, so Drover's tests and sandbox reach it exactly the way
// they would reach the official emulator (PUBSUB_EMULATOR_HOST).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8085", "host:port to serve the Pub/Sub API on")
	flag.Parse()

	host, portText, err := net.SplitHostPort(*addr)
	if err != nil {
		log.Fatalf("pubsub-emulator: --listen %q is not host:port: %v", *addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		log.Fatalf("pubsub-emulator: port %q is not a number: %v", portText, err)
	}
	srv := pstest.NewServerWithAddress(net.JoinHostPort(host, strconv.Itoa(port)))
	// The harness waits for this exact line before it hands the address to clients.
	fmt.Printf("pubsub-emulator listening on %s\n", srv.Addr)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	if err := srv.Close(); err != nil {
		log.Printf("pubsub-emulator: close: %v", err)
	}
}

// Command pubsub-emulator serves the Pub/Sub API from Google's pstest fake on
// one address, the way the official emulator does, so Drover's tests and
// sandbox reach it exactly as they would reach that emulator
// (PUBSUB_EMULATOR_HOST).
//
// pstest speaks only gRPC. The official Rust client sends publish and
// streaming pull over gRPC but topic and subscription administration over
// HTTP/JSON, so this binary serves both on one port: requests with a gRPC
// content type go to pstest's gRPC server, the rest go to a small REST
// front end (rest.go) that calls the same in-process fake.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"cloud.google.com/go/pubsub/v2/pstest"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8085", "host:port to serve the Pub/Sub API on")
	flag.Parse()

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("pubsub-emulator: cannot listen on %q: %v", *addr, err)
	}

	var grpcServer *grpc.Server
	// pstest also listens on an ephemeral loopback port of its own; only the
	// *grpc.Server it registers its services on is used here.
	fake := pstest.NewServerWithCallback(0, func(s *grpc.Server) { grpcServer = s }, limitOptions()...)
	if grpcServer == nil {
		log.Fatal("pubsub-emulator: pstest did not hand over its gRPC server")
	}

	rest := newRESTHandler(&fake.GServer)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcServer.ServeHTTP(w, r)
			return
		}
		rest.ServeHTTP(w, r)
	})
	server := &http.Server{Handler: h2c.NewHandler(handler, &http2.Server{})}

	// The harness waits for this exact line before it hands the address to clients.
	fmt.Printf("pubsub-emulator listening on %s\n", listener.Addr())

	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
		<-stop
		_ = server.Close()
	}()
	if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("pubsub-emulator: serve: %v", err)
	}
	if err := fake.Close(); err != nil {
		log.Printf("pubsub-emulator: close: %v", err)
	}
}

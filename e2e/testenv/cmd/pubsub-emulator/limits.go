package main

// Pub/Sub's limits on a published message
// (https://cloud.google.com/pubsub/quotas#resource_limits). pstest accepts
// anything; production answers INVALID_ARGUMENT, and so does this emulator,
// so a test fails where production would.

import (
	"fmt"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	maxAttributes          = 100
	maxAttributeKeyBytes   = 256
	maxAttributeValueBytes = 1024
	maxMessageBytes        = 10_000_000
)

// publishLimits refuses a Publish whose messages break a limit; it never
// handles a valid request, which then goes on to pstest.
type publishLimits struct{}

func (publishLimits) React(req interface{}) (bool, interface{}, error) {
	publish, ok := req.(*pb.PublishRequest)
	if !ok {
		return false, nil, nil
	}
	for _, m := range publish.Messages {
		if err := checkMessage(m); err != nil {
			return false, nil, err
		}
	}
	return false, nil, nil
}

func checkMessage(m *pb.PubsubMessage) error {
	if len(m.Attributes) > maxAttributes {
		return invalid("a message has %d attributes, but the maximum allowed is %d", len(m.Attributes), maxAttributes)
	}
	size := len(m.Data)
	for key, value := range m.Attributes {
		if len(key) > maxAttributeKeyBytes {
			return invalid("an attribute key is %d bytes long, but the maximum allowed is %d", len(key), maxAttributeKeyBytes)
		}
		if len(value) > maxAttributeValueBytes {
			return invalid("the attribute %q has a value that is too long. The length is %d bytes, but the maximum allowed is %d", key, len(value), maxAttributeValueBytes)
		}
		size += len(key) + len(value)
	}
	if size > maxMessageBytes {
		return invalid("a message is %d bytes, but the maximum allowed is %d", size, maxMessageBytes)
	}
	return nil
}

func invalid(format string, args ...interface{}) error {
	return status.Error(codes.InvalidArgument, fmt.Sprintf(format, args...))
}

// limitOptions installs the limits on the fake's Publish.
func limitOptions() []pstest.ServerReactorOption {
	return []pstest.ServerReactorOption{{FuncName: "Publish", Reactor: publishLimits{}}}
}

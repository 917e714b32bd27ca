package main

// The HTTP/JSON front end of the Pub/Sub admin API, translated onto pstest's
// in-process gRPC implementation. It covers what clients administer
// (topics and subscriptions: create, get, update, delete, list) plus REST
// publish, using the canonical protobuf JSON mapping and Google's JSON error
// shape so client libraries map errors to the same codes as in production.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

type restHandler struct {
	fake *pstest.GServer
}

func newRESTHandler(fake *pstest.GServer) http.Handler {
	return &restHandler{fake: fake}
}

func (h *restHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	if path == r.URL.Path {
		writeError(w, status.Errorf(codes.NotFound, "no such path %q", r.URL.Path))
		return
	}
	// REST publish is a custom method: projects/p/topics/t:publish
	resource, method, _ := strings.Cut(path, ":")
	parts := strings.Split(resource, "/")
	ctx := r.Context()

	switch {
	case len(parts) == 4 && parts[0] == "projects" && parts[2] == "topics":
		h.topic(ctx, w, r, resource, method)
	case len(parts) == 3 && parts[0] == "projects" && parts[2] == "topics" && r.Method == http.MethodGet:
		respond(w)(h.fake.ListTopics(ctx, &pb.ListTopicsRequest{Project: "projects/" + parts[1]}))
	case len(parts) == 5 && parts[0] == "projects" && parts[2] == "topics" && parts[4] == "subscriptions" && r.Method == http.MethodGet:
		respond(w)(h.fake.ListTopicSubscriptions(ctx, &pb.ListTopicSubscriptionsRequest{Topic: strings.Join(parts[:4], "/")}))
	case len(parts) == 4 && parts[0] == "projects" && parts[2] == "subscriptions":
		h.subscription(ctx, w, r, resource)
	case len(parts) == 3 && parts[0] == "projects" && parts[2] == "subscriptions" && r.Method == http.MethodGet:
		respond(w)(h.fake.ListSubscriptions(ctx, &pb.ListSubscriptionsRequest{Project: "projects/" + parts[1]}))
	default:
		writeError(w, status.Errorf(codes.NotFound, "no such method: %s %s", r.Method, r.URL.Path))
	}
}

func (h *restHandler) topic(ctx context.Context, w http.ResponseWriter, r *http.Request, name, method string) {
	switch {
	case method == "publish" && r.Method == http.MethodPost:
		req := &pb.PublishRequest{}
		if decode(w, r, req) {
			req.Topic = name
			respond(w)(h.fake.Publish(ctx, req))
		}
	case method != "":
		writeError(w, status.Errorf(codes.NotFound, "no such method %q", method))
	case r.Method == http.MethodPut:
		topic := &pb.Topic{}
		if decode(w, r, topic) {
			topic.Name = name
			respond(w)(h.fake.CreateTopic(ctx, topic))
		}
	case r.Method == http.MethodGet:
		respond(w)(h.fake.GetTopic(ctx, &pb.GetTopicRequest{Topic: name}))
	case r.Method == http.MethodPatch:
		req := &pb.UpdateTopicRequest{}
		if decode(w, r, req) {
			if req.Topic != nil {
				req.Topic.Name = name
			}
			respond(w)(h.fake.UpdateTopic(ctx, req))
		}
	case r.Method == http.MethodDelete:
		respond(w)(h.fake.DeleteTopic(ctx, &pb.DeleteTopicRequest{Topic: name}))
	default:
		writeError(w, status.Errorf(codes.Unimplemented, "%s is not supported on topics", r.Method))
	}
}

func (h *restHandler) subscription(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) {
	switch r.Method {
	case http.MethodPut:
		sub := &pb.Subscription{}
		if decode(w, r, sub) {
			sub.Name = name
			respond(w)(h.fake.CreateSubscription(ctx, sub))
		}
	case http.MethodGet:
		respond(w)(h.fake.GetSubscription(ctx, &pb.GetSubscriptionRequest{Subscription: name}))
	case http.MethodPatch:
		req := &pb.UpdateSubscriptionRequest{}
		if decode(w, r, req) {
			if req.Subscription != nil {
				req.Subscription.Name = name
			}
			respond(w)(h.fake.UpdateSubscription(ctx, req))
		}
	case http.MethodDelete:
		respond(w)(h.fake.DeleteSubscription(ctx, &pb.DeleteSubscriptionRequest{Subscription: name}))
	default:
		writeError(w, status.Errorf(codes.Unimplemented, "%s is not supported on subscriptions", r.Method))
	}
}

// decode reads a JSON request body into msg; an empty body is an empty message.
func decode(w http.ResponseWriter, r *http.Request, msg proto.Message) bool {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeError(w, status.Errorf(codes.InvalidArgument, "cannot read body: %v", err))
		return false
	}
	if len(body) == 0 {
		return true
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, msg); err != nil {
		writeError(w, status.Errorf(codes.InvalidArgument, "invalid JSON body: %v", err))
		return false
	}
	return true
}

// respond turns a fake's (response, error) pair into an HTTP reply.
func respond(w http.ResponseWriter) func(proto.Message, error) {
	return func(msg proto.Message, err error) {
		if err != nil {
			writeError(w, err)
			return
		}
		body, err := (protojson.MarshalOptions{UseEnumNumbers: true}).Marshal(msg)
		if err != nil {
			writeError(w, status.Errorf(codes.Internal, "cannot encode response: %v", err))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}
}

// httpStatus is the mapping Google's REST front ends use for gRPC codes.
var httpStatus = map[codes.Code]int{
	codes.OK:                 http.StatusOK,
	codes.Canceled:           499,
	codes.Unknown:            http.StatusInternalServerError,
	codes.InvalidArgument:    http.StatusBadRequest,
	codes.DeadlineExceeded:   http.StatusGatewayTimeout,
	codes.NotFound:           http.StatusNotFound,
	codes.AlreadyExists:      http.StatusConflict,
	codes.PermissionDenied:   http.StatusForbidden,
	codes.ResourceExhausted:  http.StatusTooManyRequests,
	codes.FailedPrecondition: http.StatusBadRequest,
	codes.Aborted:            http.StatusConflict,
	codes.OutOfRange:         http.StatusBadRequest,
	codes.Unimplemented:      http.StatusNotImplemented,
	codes.Internal:           http.StatusInternalServerError,
	codes.Unavailable:        http.StatusServiceUnavailable,
	codes.DataLoss:           http.StatusInternalServerError,
	codes.Unauthenticated:    http.StatusUnauthorized,
}

func writeError(w http.ResponseWriter, err error) {
	st := status.Convert(err)
	code, ok := httpStatus[st.Code()]
	if !ok {
		code = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"error": map[string]any{
			"code":    code,
			"message": st.Message(),
			"status":  canonicalName(st.Code()),
		},
	})
}

// canonicalName is the UPPER_SNAKE name of a code, as in Google's error JSON.
func canonicalName(code codes.Code) string {
	switch code {
	case codes.Canceled:
		return "CANCELLED"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.OutOfRange:
		return "OUT_OF_RANGE"
	case codes.Unauthenticated:
		return "UNAUTHENTICATED"
	case codes.DataLoss:
		return "DATA_LOSS"
	default:
		return strings.ToUpper(code.String())
	}
}

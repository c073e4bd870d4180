// Package keystore is a tiny example service, keystore.v1.KeyStore, audited by
// auditinterceptor. It needs no code generation: its grpc.ServiceDesc is written by hand and
// its messages are well-known types (a key name is a google.protobuf.StringValue, a list of
// names a google.protobuf.ListValue), carried by grpc-go's default protobuf codec.
//
//	rpc Create(StringValue) returns (Empty)               // ALREADY_EXISTS, INVALID_ARGUMENT
//	rpc Delete(StringValue) returns (Empty)               // NOT_FOUND
//	rpc BatchDelete(ListValue) returns (Struct)           // {"deleted": n, "missing": n}, one audit entry per name
//	rpc List(StringValue) returns (stream StringValue)    // names with a prefix
package keystore

import (
	"context"
	"io"
	"sort"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"example.com/auditsdk/audit"
	"example.com/auditsdk/auditinterceptor"
)

// ServiceName is the gRPC name of the service.
const ServiceName = "keystore.v1.KeyStore"

// Full method names, as the interceptor records them.
const (
	MethodCreate      = "/" + ServiceName + "/Create"
	MethodDelete      = "/" + ServiceName + "/Delete"
	MethodBatchDelete = "/" + ServiceName + "/BatchDelete"
	MethodList        = "/" + ServiceName + "/List"
)

// Category is the category of every entry the service describes.
const Category = "KEY_MANAGEMENT"

// Store is the key store: a set of names in memory.
type Store struct {
	mu   sync.Mutex
	keys map[string]bool
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{keys: map[string]bool{}} }

// Names are the stored keys, in order.
func (s *Store) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.keys))
	for name := range s.keys {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Register adds the service to server.
func (s *Store) Register(server *grpc.Server) { server.RegisterService(&serviceDesc, s) }

func annotate(ctx context.Context, event, resource string) {
	auditinterceptor.FromContext(ctx).Annotate(func(e *audit.Entry) {
		e.Event(event).Category(Category).Resource(resource)
	})
}

// Create adds a key.
func (s *Store) Create(ctx context.Context, name *wrapperspb.StringValue) (*emptypb.Empty, error) {
	annotate(ctx, "KEY_CREATED", "keys/"+name.GetValue())
	if name.GetValue() == "" {
		return nil, status.Error(codes.InvalidArgument, "a key needs a name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys[name.GetValue()] {
		return nil, status.Errorf(codes.AlreadyExists, "key %s exists", name.GetValue())
	}
	s.keys[name.GetValue()] = true
	return &emptypb.Empty{}, nil
}

// Delete removes a key.
func (s *Store) Delete(ctx context.Context, name *wrapperspb.StringValue) (*emptypb.Empty, error) {
	annotate(ctx, "KEY_DELETED", "keys/"+name.GetValue())
	if err := s.remove(name.GetValue()); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

func (s *Store) remove(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.keys[name] {
		return status.Errorf(codes.NotFound, "key %s does not exist", name)
	}
	delete(s.keys, name)
	return nil
}

// BatchDelete removes several keys, recording one audit entry per key (sharing the call's
// request_id); missing keys are counted, not an error of the call.
func (s *Store) BatchDelete(ctx context.Context, names *structpb.ListValue) (*structpb.Struct, error) {
	annotate(ctx, "KEYS_BATCH_DELETED", "")
	h := auditinterceptor.FromContext(ctx)
	deleted, missing := 0, 0
	for _, value := range names.GetValues() {
		name := value.GetStringValue()
		err := s.remove(name)
		if err != nil {
			missing++
		} else {
			deleted++
		}
		h.Record(h.Operation().Event("KEY_DELETED").Category(Category).Resource("keys/" + name).StatusOf(err).Build())
	}
	return structpb.NewStruct(map[string]interface{}{"deleted": deleted, "missing": missing})
}

// List streams the names that start with prefix, in order.
func (s *Store) List(prefix *wrapperspb.StringValue, stream grpc.ServerStream) error {
	annotate(stream.Context(), "KEYS_LISTED", "keys/"+prefix.GetValue()+"*")
	s.mu.Lock()
	var names []string
	for name := range s.keys {
		if strings.HasPrefix(name, prefix.GetValue()) {
			names = append(names, name)
		}
	}
	s.mu.Unlock()
	sort.Strings(names)
	for _, name := range names {
		if err := stream.SendMsg(wrapperspb.String(name)); err != nil {
			return err
		}
	}
	return nil
}

// === service descriptor ===

// unary adapts a typed method to a grpc.MethodDesc handler.
func unary(method string, newRequest func() proto.Message, call func(*Store, context.Context, proto.Message) (interface{}, error)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: method[strings.LastIndex(method, "/")+1:],
		Handler: func(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
			request := newRequest()
			if err := dec(request); err != nil {
				return nil, err
			}
			handler := func(ctx context.Context, request interface{}) (interface{}, error) {
				return call(srv.(*Store), ctx, request.(proto.Message))
			}
			if interceptor == nil {
				return handler(ctx, request)
			}
			return interceptor(ctx, request, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, handler)
		},
	}
}

func newName() proto.Message { return &wrapperspb.StringValue{} }

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{
		unary(MethodCreate, newName, func(s *Store, ctx context.Context, r proto.Message) (interface{}, error) {
			return s.Create(ctx, r.(*wrapperspb.StringValue))
		}),
		unary(MethodDelete, newName, func(s *Store, ctx context.Context, r proto.Message) (interface{}, error) {
			return s.Delete(ctx, r.(*wrapperspb.StringValue))
		}),
		unary(MethodBatchDelete, func() proto.Message { return &structpb.ListValue{} }, func(s *Store, ctx context.Context, r proto.Message) (interface{}, error) {
			return s.BatchDelete(ctx, r.(*structpb.ListValue))
		}),
	},
	Streams: []grpc.StreamDesc{{
		StreamName:    "List",
		ServerStreams: true,
		Handler: func(srv interface{}, stream grpc.ServerStream) error {
			prefix := &wrapperspb.StringValue{}
			if err := stream.RecvMsg(prefix); err != nil {
				return err
			}
			return srv.(*Store).List(prefix, stream)
		},
	}},
	Metadata: "keystore (hand-written descriptor)",
}

// === client ===

// Client calls a KeyStore server.
type Client struct{ conn grpc.ClientConnInterface }

// NewClient returns a client over conn.
func NewClient(conn grpc.ClientConnInterface) *Client { return &Client{conn: conn} }

// Create creates key name.
func (c *Client) Create(ctx context.Context, name string, opts ...grpc.CallOption) error {
	return c.conn.Invoke(ctx, MethodCreate, wrapperspb.String(name), &emptypb.Empty{}, opts...)
}

// Delete deletes key name.
func (c *Client) Delete(ctx context.Context, name string, opts ...grpc.CallOption) error {
	return c.conn.Invoke(ctx, MethodDelete, wrapperspb.String(name), &emptypb.Empty{}, opts...)
}

// BatchDelete deletes keys, returning how many were deleted and how many were missing.
func (c *Client) BatchDelete(ctx context.Context, names []string, opts ...grpc.CallOption) (deleted, missing int, err error) {
	list := &structpb.ListValue{}
	for _, name := range names {
		list.Values = append(list.Values, structpb.NewStringValue(name))
	}
	result := &structpb.Struct{}
	if err := c.conn.Invoke(ctx, MethodBatchDelete, list, result, opts...); err != nil {
		return 0, 0, err
	}
	fields := result.GetFields()
	return int(fields["deleted"].GetNumberValue()), int(fields["missing"].GetNumberValue()), nil
}

// List returns the names starting with prefix, read from the server's stream.
func (c *Client) List(ctx context.Context, prefix string, opts ...grpc.CallOption) ([]string, error) {
	stream, err := c.conn.NewStream(ctx, &serviceDesc.Streams[0], MethodList, opts...)
	if err != nil {
		return nil, err
	}
	if err := stream.SendMsg(wrapperspb.String(prefix)); err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	var names []string
	for {
		name := &wrapperspb.StringValue{}
		err := stream.RecvMsg(name)
		if err != nil {
			if err == io.EOF {
				return names, nil
			}
			return nil, err
		}
		names = append(names, name.GetValue())
	}
}

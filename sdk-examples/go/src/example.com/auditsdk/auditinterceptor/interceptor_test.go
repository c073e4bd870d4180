package auditinterceptor

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"example.com/auditsdk/audit"
)

func TestExcludedMethods(t *testing.T) {
	i := New(nil, Exclude("/grpc.health.v1.Health/*", "/a.B/C"))
	for method, want := range map[string]bool{
		"/grpc.health.v1.Health/Check": true,
		"/a.B/C":                       true,
		"/a.B/CD":                      false,
		"/keystore.v1.KeyStore/Create": false,
	} {
		if got := i.isExcluded(method); got != want {
			t.Errorf("%s: excluded=%v, want %v", method, got, want)
		}
	}
}

// unreachable is a recorder whose deliveries never succeed, with nothing running behind it.
func unreachable(t *testing.T, config RecorderConfig) *Recorder {
	client, err := audit.Dial(context.Background(), "127.0.0.1:1", audit.WithLazyConnect())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	config.Logf = func(string, ...interface{}) {}
	r := NewRecorder(client, config)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_ = r.Close(ctx)
	})
	return r
}

func TestUnaryKeepsRequestIDAndCollectsOperations(t *testing.T) {
	r := unreachable(t, RecorderConfig{Source: "test", QueueCapacity: 8})
	i := New(r, PrincipalFromMetadata("x-user"))
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-request-id", "req-1", "x-user", "alice"))
	var handle *Handle
	_, err := i.Unary()(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/k.S/Batch"}, func(ctx context.Context, _ interface{}) (interface{}, error) {
		handle = FromContext(ctx)
		handle.Record(handle.Operation().Event("OP").Build())
		return nil, status.Error(codes.PermissionDenied, "no")
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err %v", err)
	}
	if handle.RequestID() != "req-1" || handle.Caller().GetPrincipal() != "alice" {
		t.Fatalf("request_id %q caller %v", handle.RequestID(), handle.Caller())
	}
	if _, operations := handle.finish(); len(operations) != 0 {
		t.Fatalf("operations left after the call: %d", len(operations))
	}
}

func TestFailOpenCountsDrops(t *testing.T) {
	r := unreachable(t, RecorderConfig{Source: "test", QueueCapacity: 1})
	for n := 0; n < 4; n++ {
		r.Record("", audit.NewEntry("", "/k.S/M").Build())
	}
	if stats := r.Stats(); stats.Dropped < 2 {
		t.Fatalf("stats %+v, want at least 2 dropped", stats)
	}
}

func TestFailClosedReturnsUnavailable(t *testing.T) {
	r := unreachable(t, RecorderConfig{Source: "test"})
	i := New(r, FailClosed(50*time.Millisecond))
	_, err := i.Unary()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/k.S/M"}, func(context.Context, interface{}) (interface{}, error) {
		return "done", nil
	})
	if !errors.Is(err, unavailable) && status.Code(err) != codes.Unavailable {
		t.Fatalf("err %v, want UNAVAILABLE", err)
	}
}

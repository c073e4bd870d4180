package audit

import (
	"errors"
	"regexp"
	"testing"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	auditv1 "example.com/auditsdk/audit/v1"
)

var uuidV7 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestUUIDv7IsVersion7AndIncreasing(t *testing.T) {
	previous := ""
	for i := 0; i < 10000; i++ {
		id := NewUUIDv7()
		if !uuidV7.MatchString(id) {
			t.Fatalf("%q is not a canonical UUIDv7", id)
		}
		if id <= previous {
			t.Fatalf("%q does not sort after %q", id, previous)
		}
		previous = id
	}
}

func TestEntryBuilder(t *testing.T) {
	entry := NewEntry("billing-api", "/billing.v1.Billing/Charge").
		Status(codes.PermissionDenied, "nope").
		Principal("alice").
		PeerAddress("10.0.0.1:1234").
		Label("region", "eu").
		Detail("amount_cents", 1250).
		Build()
	switch {
	case entry.GetOutcome() != auditv1.Outcome_OUTCOME_DENIED || entry.GetStatusCode() != 7:
		t.Fatalf("status: %v %d", entry.GetOutcome(), entry.GetStatusCode())
	case entry.GetCaller().GetPrincipal() != "alice" || entry.GetCaller().GetNetwork().GetAddress() != "10.0.0.1:1234":
		t.Fatalf("caller: %v", entry.GetCaller())
	case entry.GetLabels()["region"] != "eu" || entry.GetDetails().AsMap()["amount_cents"] != 1250.0:
		t.Fatalf("labels %v details %v", entry.GetLabels(), entry.GetDetails())
	}
	if got := NewEntry("s", "/p.S/M").StatusOf(errors.New("boom")).Build(); got.GetOutcome() != auditv1.Outcome_OUTCOME_ERROR || got.GetStatusCode() != int32(codes.Unknown) {
		t.Fatalf("StatusOf(plain error): %v", got)
	}
}

func TestErrorNamesRefusedFields(t *testing.T) {
	detail, err := ptypes.MarshalAny(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: "entries[1].method", Description: "required"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	refusal := status.FromProto(&spb.Status{Code: int32(codes.InvalidArgument), Message: "invalid entry", Details: []*anypb.Any{detail}}).Err()
	err = wrapError("RecordBatch", refusal)
	if v := Violations(err); len(v) != 1 || v[0].Field != "entries[1].method" {
		t.Fatalf("violations %v", v)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("status.Code: %v", status.Code(err))
	}
	if want := "audit RecordBatch: InvalidArgument: invalid entry; entries[1].method: required"; err.Error() != want {
		t.Fatalf("%q, want %q", err.Error(), want)
	}
}

func TestAddresses(t *testing.T) {
	for address, want := range map[string]string{
		"127.0.0.1:50051":        "127.0.0.1:50051",
		"http://127.0.0.1:50051": "127.0.0.1:50051",
		"unix:/run/audit.sock":   "passthrough:///localhost",
		"unix:///run/audit.sock": "passthrough:///localhost",
	} {
		target, _, err := dialTarget(address, &options{})
		if err != nil || target != want {
			t.Errorf("%s: %q %v, want %q", address, target, err, want)
		}
	}
	for _, bad := range []string{"unix:", "no-port"} {
		if _, _, err := dialTarget(bad, &options{}); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

package audit

import (
	"errors"
	"fmt"
	"strings"

	protov1 "github.com/golang/protobuf/proto"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a call to the audit service that the server (or the transport) answered with a
// gRPC error. It keeps the status, so status.Code(err) and status.Convert(err) work on it.
type Error struct {
	// Method is the audit service method called, for example "Record".
	Method string
	// Code and Message are the gRPC status.
	Code    codes.Code
	Message string
	// Violations name the refused fields of an INVALID_ARGUMENT, from the google.rpc.BadRequest
	// the server sends in the status details ("source", "entries[1].method", ...).
	Violations []FieldViolation

	status *status.Status
}

// FieldViolation is one refused field of a request.
type FieldViolation struct {
	// Field is the path of the field in the request, for example "entries[2].outcome".
	Field string
	// Description says why it was refused.
	Description string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "audit %s: %s", e.Method, e.Code)
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	for _, v := range e.Violations {
		fmt.Fprintf(&b, "; %s: %s", v.Field, v.Description)
	}
	return b.String()
}

// GRPCStatus is the status the server answered with (for status.FromError and status.Code).
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Retryable reports whether the call may succeed if tried again: UNAVAILABLE (the server or
// its store is down, the connection dropped) and DEADLINE_EXCEEDED (the attempt timed out).
// Record and RecordBatch retry these themselves, which is safe because their ids are set.
func (e *Error) Retryable() bool { return retryable(e.Code) }

func retryable(code codes.Code) bool {
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// Violation returns the violation of field, if the server refused it.
func (e *Error) Violation(field string) (FieldViolation, bool) {
	for _, v := range e.Violations {
		if v.Field == field {
			return v, true
		}
	}
	return FieldViolation{}, false
}

// Violations returns the refused fields of err when it is (or wraps) an *Error, else nil.
func Violations(err error) []FieldViolation {
	var e *Error
	if errors.As(err, &e) {
		return e.Violations
	}
	return nil
}

// wrapError turns an error of a generated-client call into an *Error; errors without a gRPC
// status (none are expected from grpc-go) are returned as they are.
func wrapError(method string, err error) error {
	if err == nil {
		return nil
	}
	s, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("audit %s: %w", method, err)
	}
	return &Error{
		Method:     method,
		Code:       s.Code(),
		Message:    s.Message(),
		Violations: badRequest(s),
		status:     s,
	}
}

// badRequest decodes the google.rpc.BadRequest details of s. It unpacks the Any by its type
// URL instead of through the global registry, so it works whichever protobuf runtime
// registered errdetails.
func badRequest(s *status.Status) []FieldViolation {
	var out []FieldViolation
	for _, detail := range s.Proto().GetDetails() {
		if !strings.HasSuffix(detail.GetTypeUrl(), "/google.rpc.BadRequest") {
			continue
		}
		var request errdetails.BadRequest
		if err := protov1.Unmarshal(detail.GetValue(), &request); err != nil {
			continue
		}
		for _, v := range request.GetFieldViolations() {
			out = append(out, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
		}
	}
	return out
}

package issuer

import (
	"context"
	"sync"
)

// ForcedRenewal marks the context of a renewal an operator forced (through
// certmagic, which calls Issue with the context it was given), and tells
// whoever forced it which CertificateRequest it became.
type ForcedRenewal struct {
	once      sync.Once
	created   chan struct{}
	requestID string
}

// NewForcedRenewal returns a mark for one forced renewal.
func NewForcedRenewal() *ForcedRenewal {
	return &ForcedRenewal{created: make(chan struct{})}
}

type forcedRenewalKey struct{}

// WithForcedRenewal returns ctx marked with f.
func WithForcedRenewal(ctx context.Context, f *ForcedRenewal) context.Context {
	return context.WithValue(ctx, forcedRenewalKey{}, f)
}

func forcedRenewalOf(ctx context.Context) *ForcedRenewal {
	f, _ := ctx.Value(forcedRenewalKey{}).(*ForcedRenewal)
	return f
}

// Created is closed once the CertificateRequest exists.
func (f *ForcedRenewal) Created() <-chan struct{} { return f.created }

// RequestID is the ID of the CertificateRequest, once Created is closed;
// "" before.
func (f *ForcedRenewal) RequestID() string {
	select {
	case <-f.created:
		return f.requestID
	default:
		return ""
	}
}

// report records the request's ID; only the first report counts (certmagic
// calls Issue once per forced renewal).
func (f *ForcedRenewal) report(id string) {
	if f == nil {
		return
	}
	f.once.Do(func() {
		f.requestID = id
		close(f.created)
	})
}

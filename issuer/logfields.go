package issuer

import (
	"time"

	"go.uber.org/zap"
)

// Structured log fields used across the engine, so every line about a
// resource names it the same way.

func zapName(name string) zap.Field        { return zap.String("name", name) }
func zapOrder(id string) zap.Field         { return zap.String("order", id) }
func zapChallenge(id string) zap.Field     { return zap.String("challenge", id) }
func zapRequest(id string) zap.Field       { return zap.String("request", id) }
func zapState(state string) zap.Field      { return zap.String("state", state) }
func zapTook(d time.Duration) zap.Field    { return zap.Duration("took", d) }
func zapReason(reason string) zap.Field    { return zap.String("reason", reason) }
func zapCA(ca string) zap.Field            { return zap.String("ca", ca) }
func zapAccount(location string) zap.Field { return zap.String("account", location) }

package solvers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

// TokenKey returns the storage key under which certmagic's distributed
// solver (certmagic v0.25.6, solvers.go distributedSolver and config.go
// getACMEChallengeInfo) looks for the answer to chal when the CA asks a
// Caddy instance whose policy has an issuer with this issuer key:
//
//	acme/<Safe(issuerKey)>/challenge_tokens/<Safe(challengeKey)>.json
//
// The file is per identifier, not per token: one live challenge per name and
// issuer key, which certmagic's issue_cert_<name> lock guarantees.
func TokenKey(issuerKey string, chal acme.Challenge) string {
	return path.Join("acme", certmagic.StorageKeys.Safe(issuerKey),
		"challenge_tokens", certmagic.StorageKeys.Safe(challengeKey(chal))+".json")
}

// challengeKey mirrors certmagic's unexported challengeKey: the identifier,
// except that TLS-ALPN-01 for an IP address is looked up by the SNI the CA
// sends, the reverse-DNS name without its trailing dot (RFC 8738 §6).
func challengeKey(chal acme.Challenge) string {
	if chal.Type == acme.ChallengeTypeTLSALPN01 && chal.Identifier.Type == "ip" {
		if reversed, err := dns.ReverseAddr(chal.Identifier.Value); err == nil {
			return reversed[:len(reversed)-1]
		}
	}
	return chal.Identifier.Value
}

// TokenStore presents challenge answers where certmagic serves them from:
// any Caddy instance sharing Storage answers HTTP-01 and TLS-ALPN-01 for a
// policy with an issuer whose IssuerKey() equals IssuerKey.
type TokenStore struct {
	Storage   certmagic.Storage
	IssuerKey string
}

// Key returns the storage key of chal's answer.
func (ts TokenStore) Key(chal acme.Challenge) string {
	return TokenKey(ts.IssuerKey, chal)
}

// Present stores chal (token, key authorization and identifier) as JSON,
// exactly as certmagic's distributed solver does. Storing the same challenge
// again rewrites the same bytes, so Present is idempotent. A file left by
// another challenge for the same name is overwritten: certmagic keeps one
// file per name, and the issue_cert_<name> lock held around issuance means
// such a file can only be stale.
func (ts TokenStore) Present(ctx context.Context, chal acme.Challenge) error {
	if err := ts.check(chal); err != nil {
		return err
	}
	if chal.KeyAuthorization == "" {
		return errors.New("presenting challenge token: challenge has no key authorization")
	}
	b, err := json.Marshal(chal)
	if err != nil {
		return fmt.Errorf("presenting challenge token: encoding challenge: %w", err)
	}
	key := ts.Key(chal)
	if err := ts.Storage.Store(ctx, key, b); err != nil {
		return fmt.Errorf("presenting challenge token: storing %s: %w", key, err)
	}
	return nil
}

// CleanUp deletes chal's answer, but only while the stored file still holds
// chal's token: a later challenge for the same name may have replaced it,
// and its answer must survive. Nothing stored, or a file that is not ours
// (another token, unreadable JSON), is not an error.
//
// Load, compare and delete are not atomic (storage has no compare-and-swap);
// that is safe because only the holder of the name's issue_cert lock writes
// the file.
func (ts TokenStore) CleanUp(ctx context.Context, chal acme.Challenge) error {
	if err := ts.check(chal); err != nil {
		return err
	}
	key := ts.Key(chal)
	b, err := ts.Storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cleaning up challenge token: loading %s: %w", key, err)
	}
	var stored acme.Challenge
	if err := json.Unmarshal(b, &stored); err != nil || stored.Token != chal.Token {
		return nil
	}
	if err := ts.Storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cleaning up challenge token: deleting %s: %w", key, err)
	}
	return nil
}

// CleanUpOwned deletes chal's answer without reading it first, for a
// caller holding the name's issue_cert lock (the only writer of the file):
// one storage call instead of two.
func (ts TokenStore) CleanUpOwned(ctx context.Context, chal acme.Challenge) error {
	if err := ts.check(chal); err != nil {
		return err
	}
	key := ts.Key(chal)
	if err := ts.Storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cleaning up challenge token: deleting %s: %w", key, err)
	}
	return nil
}

// RemoveStale deletes the answer file of chal's identifier (for chal's
// type), whatever it holds: for a caller holding the name's issue_cert
// lock that presents nothing for it, to which any such file is stale.
func (ts TokenStore) RemoveStale(ctx context.Context, chal acme.Challenge) error {
	return ts.CleanUpOwned(ctx, chal)
}

// Dir is the folder of the answer files: acme/<Safe(issuerKey)>/challenge_tokens.
func (ts TokenStore) Dir() string {
	return path.Join("acme", certmagic.StorageKeys.Safe(ts.IssuerKey), "challenge_tokens")
}

// check rejects what would otherwise write a useless file or panic.
func (ts TokenStore) check(chal acme.Challenge) error {
	switch {
	case ts.Storage == nil:
		return errors.New("challenge token: no storage configured")
	case chal.Identifier.Value == "":
		return errors.New("challenge token: challenge has no identifier")
	case chal.Token == "":
		return errors.New("challenge token: challenge has no token")
	}
	return nil
}

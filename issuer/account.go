package issuer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// AccountConfig names the CA and the ACME account. Requests that share it
// share one engine: one account, one HTTP client, one nonce pool.
type AccountConfig struct {
	// CA is the directory URL.
	CA string
	// Email is the account's contact.
	Email string
	// AccountKeyFile holds the PEM private key of an existing account.
	AccountKeyFile string
	// AccountKeyPEM is the PEM private key of an existing account itself
	// (the stock acme issuer's account_key). At most one of the two.
	AccountKeyPEM string
	// EAB are external account binding credentials.
	EAB *acme.EAB
	// TrustedRootsPEMFiles are extra roots for the CA's TLS certificate.
	TrustedRootsPEMFiles []string
	// RequestTimeout bounds each HTTP request to the CA.
	RequestTimeout time.Duration
	// Proxy chooses the proxy of each request to the CA (the stock acme
	// issuer's network_proxy); nil means the environment's
	// (HTTP_PROXY, HTTPS_PROXY, NO_PROXY). ProxyKey identifies it in the
	// engine pool (two policies with different proxies get two engines).
	Proxy    func(*http.Request) (*url.URL, error)
	ProxyKey string
	// OrderRateLimit holds new orders to at most OrderRateLimit.Orders per
	// OrderRateLimit.Window for this account in this process. Zero means
	// the default for well-known CAs (Let's Encrypt: 300 per 3 hours);
	// Disabled turns it off.
	OrderRateLimit OrderRateLimit
}

// OrderRateLimit is a sliding-window limit on new orders.
type OrderRateLimit struct {
	Orders   int
	Window   time.Duration
	Disabled bool
}

// publishedOrderLimits are the new-orders limits that public CAs publish,
// by directory host.
var publishedOrderLimits = map[string]OrderRateLimit{
	"acme-v02.api.letsencrypt.org":         {Orders: 300, Window: 3 * time.Hour},
	"acme-staging-v02.api.letsencrypt.org": {Orders: 300, Window: 3 * time.Hour},
}

func (c AccountConfig) orderRateLimit() (int, time.Duration) {
	l := c.OrderRateLimit
	if l.Disabled {
		return 0, 0
	}
	if l.Orders > 0 && l.Window > 0 {
		return l.Orders, l.Window
	}
	if u, err := url.Parse(c.CA); err == nil {
		if d, ok := publishedOrderLimits[u.Hostname()]; ok {
			return d.Orders, d.Window
		}
	}
	return 0, 0
}

// poolKey identifies the account; it never includes secrets.
func (c AccountConfig) poolKey() string {
	var eabID string
	if c.EAB != nil {
		eabID = c.EAB.KeyID
	}
	var keyID string
	if c.AccountKeyPEM != "" {
		// a digest: the key itself never leaves the config
		sum := sha256.Sum256([]byte(c.AccountKeyPEM))
		keyID = "pem:" + hex.EncodeToString(sum[:8])
	}
	return strings.Join([]string{c.CA, strings.ToLower(c.Email), c.AccountKeyFile, keyID, eabID,
		strings.Join(c.TrustedRootsPEMFiles, ","), c.RequestTimeout.String(),
		fmt.Sprint(c.OrderRateLimit), c.ProxyKey}, "|")
}

// accountUser is the folder name of the account in certmagic's layout: the
// email, or for an email-less account bound with EAB its key ID, else
// certmagic's "default".
func (c AccountConfig) accountUser() string {
	switch {
	case c.Email != "":
		return strings.ToLower(c.Email)
	case c.EAB != nil:
		return "eab-" + c.EAB.KeyID
	default:
		return "default"
	}
}

// accountKeys returns the storage keys of the account registration and its
// private key in certmagic's own layout, so an account the stock acme issuer
// registered for the same CA and email is found and used (CA rate-limit
// overrides are per account), and the stock issuer can use ours.
func (c AccountConfig) accountKeys() (reg, key string) {
	user := c.accountUser()
	name := user
	if at := strings.Index(user, "@"); at > 0 {
		name = user[:at]
	} else if at == 0 {
		name = user[1:]
	}
	dir := path.Join("acme", certmagic.StorageKeys.Safe(CAKey(c.CA)), "users", certmagic.StorageKeys.Safe(user))
	name = certmagic.StorageKeys.Safe(name)
	return path.Join(dir, name+".json"), path.Join(dir, name+".key")
}

// account returns the engine's ACME account, loading or registering it on
// first use with the storage of the request that needs it. Registration runs
// under a certflow storage lock so a cluster registers once.
func (e *Engine) account(ctx context.Context, storage certmagic.Storage) (acme.Account, error) {
	e.accountMu.Lock()
	defer e.accountMu.Unlock()
	if e.acct != nil {
		return *e.acct, nil
	}
	acct, err := e.loadOrRegister(ctx, storage)
	if err != nil {
		return acme.Account{}, err
	}
	e.acct = &acct
	return acct, nil
}

func (e *Engine) loadOrRegister(ctx context.Context, storage certmagic.Storage) (acme.Account, error) {
	cfg := e.cfg
	switch {
	case cfg.AccountKeyFile != "":
		pemBytes, err := os.ReadFile(cfg.AccountKeyFile)
		if err != nil {
			return acme.Account{}, fmt.Errorf("reading account key file %s: %w", cfg.AccountKeyFile, err)
		}
		return e.accountFromKey(ctx, pemBytes, "account key file "+cfg.AccountKeyFile)
	case cfg.AccountKeyPEM != "":
		return e.accountFromKey(ctx, []byte(cfg.AccountKeyPEM), "account_key")
	}
	regKey, privKey := cfg.accountKeys()
	if acct, err := loadStoredAccount(ctx, storage, regKey, privKey); err == nil {
		return acct, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return acme.Account{}, err
	}

	lockName := "certflow_register_account_" + certmagic.StorageKeys.Safe(CAKey(cfg.CA)) + "_" + certmagic.StorageKeys.Safe(cfg.accountUser())
	if err := storage.Lock(ctx, lockName); err != nil {
		return acme.Account{}, fmt.Errorf("%w: locking %s: %w", ErrStorage, lockName, err)
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), lockName) }()

	// another node may have registered while we waited for the lock
	if acct, err := loadStoredAccount(ctx, storage, regKey, privKey); err == nil {
		return acct, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return acme.Account{}, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return acme.Account{}, fmt.Errorf("generating account key: %w", err)
	}
	acct, err := e.register(ctx, key)
	if err != nil {
		return acme.Account{}, err
	}
	regJSON, err := json.MarshalIndent(acct, "", "\t")
	if err != nil {
		return acme.Account{}, fmt.Errorf("encoding account: %w", err)
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		return acme.Account{}, fmt.Errorf("encoding account key: %w", err)
	}
	if err := storage.Store(ctx, privKey, keyPEM); err != nil {
		return acme.Account{}, fmt.Errorf("%w: storing account key %s: %w", ErrStorage, privKey, err)
	}
	if err := storage.Store(ctx, regKey, regJSON); err != nil {
		return acme.Account{}, fmt.Errorf("%w: storing account %s: %w", ErrStorage, regKey, err)
	}
	e.logger.Info("registered ACME account", zapCA(cfg.CA), zapAccount(acct.Location))
	return acct, nil
}

// register creates (or, for a known key, finds) the account at the CA.
func (e *Engine) register(ctx context.Context, key *ecdsa.PrivateKey) (acme.Account, error) {
	acct := acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}
	if e.cfg.Email != "" {
		acct.Contact = []string{"mailto:" + e.cfg.Email}
	}
	if e.cfg.EAB != nil {
		if err := acct.SetExternalAccountBinding(ctx, e.client, *e.cfg.EAB); err != nil {
			return acme.Account{}, fmt.Errorf("binding external account %s: %w", e.cfg.EAB.KeyID, err)
		}
	}
	var out acme.Account
	err := callCA(ctx, "registering account", func(ctx context.Context) error {
		var err error
		out, err = e.client.NewAccount(ctx, acct)
		return err
	})
	if err != nil {
		return acme.Account{}, err
	}
	return out, nil
}

// accountFromKey finds the account of an existing key at the CA, or
// registers one for it; source names the key in errors (never its bytes).
func (e *Engine) accountFromKey(ctx context.Context, pemBytes []byte, source string) (acme.Account, error) {
	key, err := certmagic.PEMDecodePrivateKey(pemBytes)
	if err != nil {
		return acme.Account{}, fmt.Errorf("decoding %s: not a PEM-encoded private key", source)
	}
	acct := acme.Account{PrivateKey: key}
	err = callCA(ctx, "looking up account by key", func(ctx context.Context) error {
		var err error
		acct, err = e.client.GetAccount(ctx, acct)
		return err
	})
	if err == nil {
		return acct, nil
	}
	var prob acme.Problem
	if !errors.As(err, &prob) || prob.Type != acme.ProblemTypeAccountDoesNotExist {
		return acme.Account{}, err
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return acme.Account{}, fmt.Errorf("%s: no account exists for it and only ECDSA keys can register a new one", source)
	}
	return e.register(ctx, ecKey)
}

func loadStoredAccount(ctx context.Context, storage certmagic.Storage, regKey, privKey string) (acme.Account, error) {
	regBytes, err := storage.Load(ctx, regKey)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return acme.Account{}, err
		}
		return acme.Account{}, fmt.Errorf("%w: loading %s: %w", ErrStorage, regKey, err)
	}
	keyBytes, err := storage.Load(ctx, privKey)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return acme.Account{}, err
		}
		return acme.Account{}, fmt.Errorf("%w: loading %s: %w", ErrStorage, privKey, err)
	}
	var acct acme.Account
	if err := json.Unmarshal(regBytes, &acct); err != nil {
		return acme.Account{}, fmt.Errorf("%w: %s: %w", ErrCorrupt, regKey, err)
	}
	if acct.PrivateKey, err = certmagic.PEMDecodePrivateKey(keyBytes); err != nil {
		// never echo the key's bytes
		return acme.Account{}, fmt.Errorf("%w: %s does not hold a usable private key", ErrCorrupt, privKey)
	}
	if acct.Location == "" {
		return acme.Account{}, fmt.Errorf("%w: %s has no account URL", ErrCorrupt, regKey)
	}
	return acct, nil
}

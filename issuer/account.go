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
	"go.uber.org/zap"
)

// AccountConfig names the CA and the ACME account, and the HTTP client
// settings that reach it. Requests that share it share one engine: one
// account, one HTTP client and nonce pool, one circuit breaker.
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

// effective returns the limit in force for ca: l when set, else the
// published limit of a well-known CA, else none (0, 0).
func (l OrderRateLimit) effective(ca string) (int, time.Duration) {
	if l.Disabled {
		return 0, 0
	}
	if l.Orders > 0 && l.Window > 0 {
		return l.Orders, l.Window
	}
	if u, err := url.Parse(ca); err == nil {
		if d, ok := publishedOrderLimits[u.Hostname()]; ok {
			return d.Orders, d.Window
		}
	}
	return 0, 0
}

// PoolKey identifies the engine for cfg: the CA, the account, and the
// HTTP client settings (trusted roots, request timeout), which shape the
// client the account's requests share. It never includes secrets.
func (c AccountConfig) PoolKey() string {
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
		strings.Join(c.TrustedRootsPEMFiles, ","), c.RequestTimeout.String(), c.ProxyKey}, "|")
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

// accountLookupTimeout bounds one lookup or registration of the account,
// which runs detached from the request that started it.
const accountLookupTimeout = 2 * time.Minute

// accountFlight is a lookup of the account in progress, shared by every
// request that needs the account meanwhile.
type accountFlight struct {
	done chan struct{}
	acct acme.Account
	err  error
}

// account returns the engine's ACME account, loading or registering it on
// first use. One lookup runs at a time, detached from the requests that
// wait for it: each waits only as long as its own context and budget allow
// (a handshake does not wait behind a registration stuck in a CA outage).
func (e *Engine) account(ctx context.Context, s store, mode callMode, budget time.Duration) (acme.Account, error) {
	e.accountMu.Lock()
	if e.acct != nil {
		acct := *e.acct
		e.accountMu.Unlock()
		return acct, nil
	}
	f := e.accountFlight
	if f == nil {
		f = &accountFlight{done: make(chan struct{})}
		e.accountFlight = f
		verify := e.verifyAccount
		go e.lookUpAccount(context.WithoutCancel(ctx), s, mode.observer, verify, f)
	}
	e.accountMu.Unlock()

	wait := time.NewTimer(max(budget, 0))
	defer wait.Stop()
	select {
	case <-f.done:
		return f.acct, f.err
	case <-ctx.Done():
		return acme.Account{}, cutOff(ctx, PartyCA, fmt.Errorf("waiting for the ACME account: %w", ctx.Err()))
	case <-wait.C:
		return acme.Account{}, charge(PartyCA, fmt.Errorf("the ACME account is still being looked up or registered after %s, more than this request can wait", budget.Round(time.Second)))
	}
}

// lookUpAccount runs one account lookup and hands its result to f.
func (e *Engine) lookUpAccount(ctx context.Context, s store, obs Observer, verify bool, f *accountFlight) {
	ctx, cancel := context.WithTimeout(ctx, accountLookupTimeout)
	defer cancel()
	acct, err := e.loadOrRegister(ctx, s, callMode{observer: obs}, verify)
	if party, _ := chargedTo(err); party == PartyAccount {
		err = e.accountFailed(ctx, s, err)
	}
	e.accountMu.Lock()
	if err == nil {
		e.acct, e.verifyAccount = &acct, false
	}
	e.accountFlight = nil
	e.accountMu.Unlock()
	f.acct, f.err = acct, err
	close(f.done)
}

// accountFailed handles a problem of the account itself (unknown to the
// CA, deactivated, action required): the cached account is dropped; an
// account the CA does not know is registered again by the next request;
// any other problem holds the engine (every node sharing the storage) with
// the CA's reason, for a wait that doubles up to AccountHoldMax, after
// which the account is looked up at the CA again. It returns err charged
// to the account, with the hold's end.
func (e *Engine) accountFailed(ctx context.Context, s store, err error) error {
	e.accountMu.Lock()
	e.acct, e.verifyAccount = nil, true
	unknown := problemType(err) == acme.ProblemTypeAccountDoesNotExist
	if unknown {
		e.accountHoldWait = 0
		e.accountMu.Unlock()
		e.logger.Warn("the CA does not know the ACME account; it is registered again by the next request", zapReason(problemDetail(err)))
		return &ChargedError{Party: PartyAccount, Err: err}
	}
	e.accountHoldWait = min(max(e.accountHoldWait*2, time.Minute), AccountHoldMax)
	wait := e.accountHoldWait
	e.accountMu.Unlock()
	until := time.Now().Add(wait)
	hold := Hold{Scope: HoldScope{Kind: ScopeAccount, Value: e.cfg.accountUser()}, Until: until,
		Reason: problemDetail(err), Limit: "account problem"}
	ctx, cancel := detached(ctx)
	defer cancel()
	if serr := e.holdsFor(s).put(ctx, s, hold); serr != nil {
		e.logger.Error("recording the account's hold", zap.Error(serr))
	}
	e.logger.Error("the ACME account has a problem; new orders are held, then the account is looked up again",
		zap.Time("until", until), zapReason(problemDetail(err)))
	return &ChargedError{Party: PartyAccount, Until: until, Err: err}
}

func (e *Engine) loadOrRegister(ctx context.Context, s store, mode callMode, verify bool) (acme.Account, error) {
	cfg := e.cfg
	storage := s.storage
	switch {
	case cfg.AccountKeyFile != "":
		pemBytes, err := os.ReadFile(cfg.AccountKeyFile)
		if err != nil {
			return acme.Account{}, fmt.Errorf("reading account key file %s: %w", cfg.AccountKeyFile, err)
		}
		return e.accountFromKey(ctx, pemBytes, "account key file "+cfg.AccountKeyFile, mode)
	case cfg.AccountKeyPEM != "":
		return e.accountFromKey(ctx, []byte(cfg.AccountKeyPEM), "account_key", mode)
	}
	regKey, privKey := cfg.accountKeys()
	if acct, err := loadStoredAccount(ctx, storage, regKey, privKey); err == nil {
		if !verify {
			return acct, nil
		}
		return e.verifyStoredAccount(ctx, storage, acct, regKey, mode)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return acme.Account{}, charge(PartyStorage, err)
	}
	// absence is not proof: a new account is registered only once the
	// store is known to answer
	if err := s.confirmAbsent(ctx, regKey); err != nil {
		return acme.Account{}, charge(PartyStorage, err)
	}

	lockName := "certflow_register_account_" + certmagic.StorageKeys.Safe(CAKey(cfg.CA)) + "_" + certmagic.StorageKeys.Safe(cfg.accountUser())
	if err := storage.Lock(ctx, lockName); err != nil {
		return acme.Account{}, charge(PartyStorage, fmt.Errorf("%w: locking %s: %w", ErrStorage, lockName, err))
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), lockName) }()

	// another node may have registered while we waited for the lock
	if acct, err := loadStoredAccount(ctx, storage, regKey, privKey); err == nil {
		return acct, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return acme.Account{}, charge(PartyStorage, err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return acme.Account{}, fmt.Errorf("generating account key: %w", err)
	}
	acct, err := e.register(ctx, key, mode)
	if err != nil {
		return acme.Account{}, err
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		return acme.Account{}, fmt.Errorf("encoding account key: %w", err)
	}
	if err := storage.Store(ctx, privKey, keyPEM); err != nil {
		return acme.Account{}, charge(PartyStorage, fmt.Errorf("%w: storing account key %s: %w", ErrStorage, privKey, err))
	}
	if err := storeRegistration(ctx, storage, regKey, acct); err != nil {
		return acme.Account{}, err
	}
	e.logger.Info("registered ACME account", zapCA(cfg.CA), zapAccount(acct.Location))
	return acct, nil
}

// verifyStoredAccount asks the CA about a stored account after a problem
// of the account: one the CA no longer knows is registered again with the
// same key (and stored), one that is not valid stays a problem.
func (e *Engine) verifyStoredAccount(ctx context.Context, storage certmagic.Storage, acct acme.Account, regKey string, mode callMode) (acme.Account, error) {
	fresh := acct
	err := e.call(ctx, opAccount, "looking up the account at the CA", mode, func(ctx context.Context) error {
		var err error
		fresh, err = e.ca.GetAccount(ctx, acct)
		return err
	})
	if problemType(err) == acme.ProblemTypeAccountDoesNotExist {
		key, ok := acct.PrivateKey.(*ecdsa.PrivateKey)
		if !ok {
			return acme.Account{}, fmt.Errorf("the CA does not know the stored account, and only an ECDSA key can register it again: %w", err)
		}
		registered, err := e.register(ctx, key, mode)
		if err != nil {
			return acme.Account{}, err
		}
		if err := storeRegistration(ctx, storage, regKey, registered); err != nil {
			return acme.Account{}, err
		}
		e.logger.Info("registered the ACME account again", zapCA(e.cfg.CA), zapAccount(registered.Location))
		return registered, nil
	}
	if err != nil {
		return acme.Account{}, err
	}
	if fresh.Status != "" && fresh.Status != acme.StatusValid {
		return acme.Account{}, charge(PartyAccount, fmt.Errorf("the ACME account is %s at the CA", fresh.Status))
	}
	fresh.PrivateKey = acct.PrivateKey
	if fresh.Location == "" {
		fresh.Location = acct.Location
	}
	return fresh, nil
}

func storeRegistration(ctx context.Context, storage certmagic.Storage, regKey string, acct acme.Account) error {
	regJSON, err := json.MarshalIndent(acct, "", "\t")
	if err != nil {
		return fmt.Errorf("encoding account: %w", err)
	}
	if err := storage.Store(ctx, regKey, regJSON); err != nil {
		return charge(PartyStorage, fmt.Errorf("%w: storing account %s: %w", ErrStorage, regKey, err))
	}
	return nil
}

// register creates (or, for a known key, finds) the account at the CA.
func (e *Engine) register(ctx context.Context, key *ecdsa.PrivateKey, mode callMode) (acme.Account, error) {
	acct := acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}
	if e.cfg.Email != "" {
		acct.Contact = []string{"mailto:" + e.cfg.Email}
	}
	if e.cfg.EAB != nil {
		err := e.call(ctx, opAccount, "binding external account "+e.cfg.EAB.KeyID, mode, func(ctx context.Context) error {
			return e.ca.BindExternalAccount(ctx, &acct, *e.cfg.EAB)
		})
		if err != nil {
			return acme.Account{}, err
		}
	}
	var out acme.Account
	err := e.call(ctx, opAccount, "registering account", mode, func(ctx context.Context) error {
		var err error
		out, err = e.ca.NewAccount(ctx, acct)
		return err
	})
	if err != nil {
		return acme.Account{}, err
	}
	return out, nil
}

// accountFromKey finds the account of an existing key at the CA, or
// registers one for it; source names the key in errors (never its bytes).
func (e *Engine) accountFromKey(ctx context.Context, pemBytes []byte, source string, mode callMode) (acme.Account, error) {
	key, err := certmagic.PEMDecodePrivateKey(pemBytes)
	if err != nil {
		return acme.Account{}, fmt.Errorf("decoding %s: not a PEM-encoded private key", source)
	}
	acct := acme.Account{PrivateKey: key}
	err = e.call(ctx, opAccount, "looking up account by key", mode, func(ctx context.Context) error {
		var err error
		acct, err = e.ca.GetAccount(ctx, acct)
		return err
	})
	if err == nil {
		if acct.Status != "" && acct.Status != acme.StatusValid {
			return acme.Account{}, charge(PartyAccount, fmt.Errorf("the ACME account of %s is %s at the CA", e.cfg.AccountKeyFile, acct.Status))
		}
		return acct, nil
	}
	if problemType(err) != acme.ProblemTypeAccountDoesNotExist {
		return acme.Account{}, err
	}
	ecKey, ok := key.(*ecdsa.PrivateKey)
	if !ok {
		return acme.Account{}, fmt.Errorf("%s: no account exists for it and only ECDSA keys can register a new one", source)
	}
	return e.register(ctx, ecKey, mode)
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

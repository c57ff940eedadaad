package issuer

// What reaches storage, and why: the one table of the points at which a
// run writes its resources. A run changes its resources in memory
// (advance) and writes them at the points below; crash-resume relies on
// nothing else. A state that is not written is still told to the observer
// (events, metrics, logs), and its time is written with the next write.
//
// A happy issuance writes its name's record when its order is made (the
// request and the order in flight: what a restart resumes), the answer of
// its challenge (the token, for HTTP-01 and TLS-ALPN-01), and its
// request's own record at the end, with the order and its challenges in
// it: three writes. What the table calls "own record" is a resource's own
// key (requests/, orders/, challenges/): from its first write there, its
// later states are written there too.

// Where a state is written (SaveRule.Where).
const (
	// WrittenInName: in the name's record (names/<name>.json).
	WrittenInName = "name record"
	// WrittenWithRequest: with the request's own record, at its end
	// (requests/<id>.json), or in the resource's own record when it has
	// one.
	WrittenWithRequest = "request record"
	// WrittenOwn: in the resource's own record.
	WrittenOwn = "own record"
	// NotWritten: only told to the observer; its time goes with the next
	// write.
	NotWritten = ""
)

// SaveRule says where reaching a state is written, and why.
type SaveRule struct {
	Where string
	// Why is the reason, as the docs give it.
	Why string
}

// SaveRules lists, per kind of resource and state, where reaching it is
// written (the README shows the same table, checked by a test).
var SaveRules = map[string]map[string]SaveRule{
	KindRequest: {
		RequestPending: {WrittenInName, "with the order it produces, in the name's record: a restart resumes the order; a request that waits for a hold is written in its own record, so the wait is visible"},
		RequestReady:   {WrittenOwn, "the outcome, with the order and the challenges: the issuance's one write of its own"},
		RequestFailed:  {WrittenOwn, "the outcome and the next attempt, with the order and the challenges"},
	},
	KindOrder: {
		OrderPending:    {WrittenInName, "created, or resumed for a new request: a restart resumes it by its URL"},
		OrderReady:      {NotWritten, "the CA's order state tells a resumed request"},
		OrderProcessing: {NotWritten, "the CA's order state tells a resumed request that it was finalized"},
		OrderValid:      {WrittenWithRequest, "the outcome"},
		OrderInvalid:    {WrittenWithRequest, "the outcome; the order is never resumed"},
		OrderErrored:    {WrittenWithRequest, "the outcome; the order is never resumed (one replaced or abandoned apart from a request: its own record)"},
	},
	KindChallenge: {
		ChallengeQueued:      {WrittenOwn, "when it has to wait for a slot, so the wait is visible; a challenge granted a slot at once passes through it unwritten"},
		ChallengeScheduled:   {NotWritten, "a resumed request reads the authorization again"},
		ChallengeSynced:      {NotWritten, "a resumed request reads the authorization again"},
		ChallengePresented:   {WrittenOwn, "DNS-01: before the record is published, with what will be published, so a crash or a failed write never leaves a record nobody can clean up (again with the record the provider returned); HTTP-01, TLS-ALPN-01: not written, the token is in storage and maintenance removes one no issuance has; written when a self-check fails, with the reason"},
		ChallengeSelfChecked: {NotWritten, "the self-check is repeated after a restart"},
		ChallengeAccepted:    {NotWritten, "the authorization at the CA tells a resumed request it was accepted"},
		ChallengeValid:       {WrittenWithRequest, "the outcome; what was presented is removed at the same time (a clean-up that fails is written in the challenge's own record, for maintenance)"},
		ChallengeInvalid:     {WrittenWithRequest, "the outcome; what was presented is removed at the same time"},
		ChallengeErrored:     {WrittenWithRequest, "the outcome; what was presented is removed at the same time"},
	},
}

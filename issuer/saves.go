package issuer

// What reaches storage, and why: the one table of the points at which a
// run commits its resource. A run changes its resource in memory
// (advance) and writes it whole with commit; it commits exactly when it
// reaches a state this table marks Saved, and crash-resume relies on
// nothing else. A state that is not saved is still told to the observer
// (events, metrics, logs) and its time is written with the next commit.
// Besides the states below, a stored order resumed by a new request is
// committed once, whatever its state: it then points at that request.
// The README's state table is checked against this one by a test.

// SaveRule says whether reaching a state is written at once.
type SaveRule struct {
	Saved bool
	// Why is the reason, as the README gives it.
	Why string
}

// SaveRules lists, per kind of resource and state, whether reaching the
// state is committed to storage at once.
var SaveRules = map[string]map[string]SaveRule{
	KindRequest: {
		RequestPending: {true, "written with the order it produces (or its failure): the name's record points at the order a restart resumes"},
		RequestReady:   {true, "the outcome, for status"},
		RequestFailed:  {true, "the outcome and the next attempt, for status"},
	},
	KindOrder: {
		OrderPending:    {true, "created, or resumed for a new request: a restart resumes it by its URL"},
		OrderReady:      {false, "the CA's order state tells a resumed request"},
		OrderProcessing: {false, "the CA's order state tells a resumed request that it was finalized"},
		OrderValid:      {true, "the outcome"},
		OrderInvalid:    {true, "the outcome; the order is never resumed"},
		OrderErrored:    {true, "the outcome; the order is never resumed"},
	},
	KindChallenge: {
		ChallengeQueued:      {true, "when it has to wait for a slot, so the wait is visible; a challenge granted a slot at once passes through it unwritten"},
		ChallengeScheduled:   {false, "a resumed request reads the authorization again"},
		ChallengeSynced:      {false, "a resumed request reads the authorization again"},
		ChallengePresented:   {true, "written before the answer is published, so a crash or a failed write never leaves an answer nobody can clean up (DNS-01 again with the record the provider returned)"},
		ChallengeSelfChecked: {false, "the self-check is repeated after a restart"},
		ChallengeAccepted:    {false, "the authorization at the CA tells a resumed request it was accepted"},
		ChallengeValid:       {true, "the outcome; what was presented is removed at the same time"},
		ChallengeInvalid:     {true, "the outcome; what was presented is removed at the same time"},
		ChallengeErrored:     {true, "the outcome; what was presented is removed at the same time"},
	},
}

// isSaved reports whether reaching state commits a resource of kind.
func isSaved(kind, state string) bool { return SaveRules[kind][state].Saved }

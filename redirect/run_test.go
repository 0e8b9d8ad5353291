package redirect

import (
	"context"
	"strings"
	"testing"
	"time"
)

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// runInBackground starts Run and stops it when the test ends, failing the
// test if Run does not return.
func runInBackground(t *testing.T, rec *Reconciler, period time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx, period) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context was cancelled")
		}
	})
}

func TestRunInstallsAtOnceAndFollowsSetEndpoints(t *testing.T) {
	fx := newFixture(t)
	if err := fx.rec.SetEndpoints([]Endpoint{awsV4}); err != nil {
		t.Fatal(err)
	}
	// A period far beyond the test's length: every sync seen here was
	// triggered by the start or by SetEndpoints.
	runInBackground(t, fx.rec, time.Hour)
	waitFor(t, "readiness", fx.rec.Ready)

	if err := fx.rec.SetEndpoints([]Endpoint{awsV4, private}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the new endpoint's rule", func() bool {
		lines, _ := fx.v4.List("nat", NATChain)
		return strings.Contains(strings.Join(lines, "\n"), "192.168.100.21")
	})
	if fx.repairs() != 0 {
		t.Errorf("repairs = %v, want 0", fx.repairs())
	}
}

func TestRunRepairsPeriodically(t *testing.T) {
	fx := newFixture(t)
	if err := fx.rec.SetEndpoints([]Endpoint{awsV4}); err != nil {
		t.Fatal(err)
	}
	runInBackground(t, fx.rec, 10*time.Millisecond)
	waitFor(t, "readiness", fx.rec.Ready)
	fx.v4.run("-t nat -F " + NATChain)
	waitFor(t, "one repair", func() bool { return fx.repairs() == 1 })
	waitFor(t, "the rule back", func() bool {
		lines, _ := fx.v4.List("nat", NATChain)
		return len(lines) == 2
	})
}

func TestRunRetriesAFailedSync(t *testing.T) {
	fx := newFixture(t)
	if err := fx.rec.SetEndpoints([]Endpoint{awsV4}); err != nil {
		t.Fatal(err)
	}
	fails := 2
	fx.v4.mu.Lock()
	fx.v4.failOn = func(op string) error {
		if strings.HasPrefix(op, "insert") && fails > 0 {
			fails--
			return &fakeErr{4, "Another app is currently holding the xtables lock"}
		}
		return nil
	}
	fx.v4.mu.Unlock()
	// The retry backs off from 500ms, well under the hour: two failures
	// and a success take about 1.5s.
	runInBackground(t, fx.rec, time.Hour)
	waitFor(t, "readiness after two failed syncs", fx.rec.Ready)
	if got := fx.syncs("error"); got != 2 {
		t.Errorf("syncs{error} = %v, want 2", got)
	}
}

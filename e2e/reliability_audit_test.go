//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// TestFloodOfDenialsKeepsTheAuditTrail: one pod is denied (user-data: not
// allowed by its rule; credentials: credential-path) as fast as it
// can for three seconds while three others make a few requests each. Every
// line of the others is in the audit log; the flooder's denials are
// written up to the burst and the rate of --audit-deny-rate and
// --audit-deny-burst, the rest counted in a summary line with the count
// and in metaguard_audit_lines_suppressed_total; its credential-path
// denials, which are never left out, are all there.
func TestFloodOfDenialsKeepsTheAuditTrail(t *testing.T) {
	const rate, burst = 5, 20
	const flood = 3 * time.Second
	// Readers may read the meta-data tree, credentials aside.
	n := startNode(t, relPolicy+`  - name: readers
    podSelector: {matchLabels: {app: reader}}
    allow:
      - paths: ["/latest/meta-data/**"]
`, fmt.Sprintf("--audit-deny-rate=%d", rate), fmt.Sprintf("--audit-deny-burst=%d", burst))
	flooder := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "flooder", Labels: map[string]string{"app": "reader"}})
	others := []*sandbox.Pod{
		n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}}),
		n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web-2", Labels: map[string]string{"app": "web"}}),
		n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"role": "metadata-accessor"}}),
	}
	// Each of the others: allowed, denied and credential-path requests.
	theirs := []string{instanceID, instanceID, awsCreds, "http://169.254.169.254/latest/meta-data/hostname", gcpZone}

	var mu sync.Mutex
	denials, credDenials := 0, 0
	var wg sync.WaitGroup
	begin := time.Now()
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := "http://169.254.169.254/latest/user-data"
			if i == 0 {
				url = awsCreds // a credential-path denial: never left out
			}
			for time.Since(begin) < flood {
				r, _, err := podGet(n.ctx, n.s, flooder, url, nil)
				if err != nil || r.status != 403 {
					continue
				}
				mu.Lock()
				if i == 0 {
					credDenials++
				} else {
					denials++
				}
				mu.Unlock()
			}
		}()
	}
	sent := map[string]int{}
	for round := 0; time.Since(begin) < flood-500*time.Millisecond && round < 5; round++ {
		for _, p := range others {
			for _, url := range theirs {
				hdr := map[string]string(nil)
				if url == gcpZone {
					hdr = google
				}
				if _, _, err := podGet(n.ctx, n.s, p, url, hdr); err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				sent[p.Name]++
			}
		}
	}
	wg.Wait()
	elapsed := time.Since(begin)
	suppressed := n.scalar("metaguard_audit_lines_suppressed_total")
	// A graceful stop writes the pending summaries and flushes.
	if err := n.mg.Stop(); err != nil {
		t.Fatal(err)
	}
	out, err := n.mg.Stdout()
	if err != nil {
		t.Fatal(err)
	}

	got := map[string]int{}
	var flooderDenials, flooderCred, summarised, summaries int
	var flooderBytes int
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l, err := audit.Decode(sc.Bytes())
		if err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if l.Pod != flooder.Name {
			got[l.Pod]++
			continue
		}
		flooderBytes += len(sc.Bytes()) + 1
		switch {
		case l.Reason == audit.ReasonDenialsSuppressed:
			summaries++
			for _, k := range l.Suppressed {
				summarised += k
			}
		case l.Reason == audit.ReasonCredentialPath:
			flooderCred++
		default:
			flooderDenials++
		}
	}
	allowed := burst + int(rate*elapsed.Seconds()) + 1
	reportf(t, "--audit-deny-rate=%d --audit-deny-burst=%d; in %s the flooder was denied %d times and %d times on credentials: %d denial lines written (at most %d allowed), %d summaries counting %d, suppressed_total %v, %d credential-path lines; flooder's lines %d bytes (%.0f B/s); the others' lines %v of %v",
		rate, burst, elapsed.Round(time.Millisecond), denials, credDenials, flooderDenials, allowed, summaries, summarised, suppressed, flooderCred,
		flooderBytes, float64(flooderBytes)/elapsed.Seconds(), got, sent)
	for _, p := range others {
		if got[p.Name] != sent[p.Name] {
			t.Errorf("%s: %d audit lines for %d requests", p, got[p.Name], sent[p.Name])
		}
	}
	if flooderDenials < burst || flooderDenials > allowed {
		t.Errorf("%d of the flooder's %d denials written, want between the burst %d and %d", flooderDenials, denials, burst, allowed)
	}
	if summaries == 0 || summarised != denials-flooderDenials || suppressed != float64(summarised) {
		t.Errorf("%d summaries count %d suppressed lines and the metric %v, want %d", summaries, summarised, suppressed, denials-flooderDenials)
	}
	if flooderCred != credDenials {
		t.Errorf("%d credential-path lines for %d credential-path denials: they are never left out", flooderCred, credDenials)
	}
}

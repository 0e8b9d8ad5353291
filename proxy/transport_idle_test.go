package proxy

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestALateUnsolicitedAnswerNeverReachesTheNextPod: an upstream that sends
// a response on a keep-alive connection after the proxy has put it back in
// its pool, so the bytes arrive apart from the answer they follow. Read
// when the connection is next used, they would be the next pod's answer; a
// transport that only looks at what is buffered when a response ends (the
// hand-written pool this proxy once measured) hands them over. The proxy's
// transport must notice them while the connection is idle and hang up.
func TestALateUnsolicitedAnswerNeverReachesTheNextPod(t *testing.T) {
	answered, closed := make(chan struct{}), make(chan struct{}, 1)
	up := newRawUpstream(t, func(c net.Conn, br *bufio.Reader) {
		for first := true; ; first = false {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			reply(c, "i-0123")
			if !first {
				continue
			}
			<-answered // the first pod has its answer: the connection is idle
			reply(c, "SMUGGLED")
			if _, err := br.ReadByte(); err != nil {
				closed <- struct{}{}
			}
			return
		}
	})
	h := newHarnessAt(t, "aws", "", up.addr())
	if resp, body := h.do(plainPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 || body != "i-0123" {
		t.Fatalf("first request: %d %q", resp.StatusCode, body)
	}
	close(answered)
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy kept an idle upstream connection that sent an answer nobody asked for")
	}
	if resp, body := h.do(otherPod, "GET", "/latest/meta-data/instance-id", nil); resp.StatusCode != 200 || body != "i-0123" {
		t.Fatalf("the next pod got %d %q", resp.StatusCode, body)
	}
}

package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
)

// controlAddrs are the fakecloud control listeners, on the cloud
// namespace's loopback so that no pod can reach them.
var controlAddrs = map[fakecloud.Flavor]string{
	fakecloud.GCP:   "127.0.0.1:9001",
	fakecloud.Azure: "127.0.0.1:9002",
}

// startCloud starts the metadata services in the cloud namespace and waits
// until each answers TCP from the node namespace, which proves the routes
// as well as the listeners.
func (s *Sandbox) startCloud(ctx context.Context) error {
	mock := filepath.Join(s.binDir, "ec2-metadata-mock")
	fake := filepath.Join(s.binDir, "fakecloud")
	type svc struct {
		name string
		path string
		args []string
		addr string
	}
	mockArgs := func(ap string, extra ...string) []string {
		h, p, _ := net.SplitHostPort(ap)
		if strings.Contains(h, ":") {
			// The mock joins host and port with a bare ":".
			h = "[" + h + "]"
		}
		return append([]string{"-n", h, "-p", p}, extra...)
	}
	gcpListen := []string{GCPMetadata.String(), GCPMetadataV6.String()}
	azureListen := []string{AzureMetadata.String()}
	var gcpDNS []string
	svcs := []svc{
		{"imds-aws-v6", mock, mockArgs(AWSIMDSv6.String()), AWSIMDSv6.String()},
		{"imds-aws-v2only", mock, mockArgs(AWSIMDSv2Only.String(), "-I"), AWSIMDSv2Only.String()},
		{"literal-service", mock, mockArgs(LiteralService.String()), LiteralService.String()},
	}
	switch s.opts.MetadataCloud {
	case fakecloud.GCP:
		gcpListen = append(gcpListen, MetadataIP.String())
		gcpDNS = append(gcpDNS, net.JoinHostPort(MetadataIP.Addr().String(), "53"))
	case fakecloud.Azure:
		azureListen = append(azureListen, MetadataIP.String())
	default:
		svcs = append(svcs, svc{"imds-aws", mock, mockArgs(AWSIMDS.String()), AWSIMDS.String()})
	}
	svcs = append(svcs,
		svc{"fakecloud-gcp", fake, []string{"-flavor", "gcp", "-listen", strings.Join(gcpListen, ","), "-dns", strings.Join(gcpDNS, ","),
			"-control", controlAddrs[fakecloud.GCP]}, GCPMetadata.String()},
		svc{"fakecloud-azure", fake, []string{"-flavor", "azure", "-listen", strings.Join(azureListen, ","), "-control", controlAddrs[fakecloud.Azure]}, AzureMetadata.String()},
	)
	procs := make([]*Process, len(svcs))
	for i, sv := range svcs {
		p, err := s.startProc(procSpec{
			netns: s.cloudNetns(), name: sv.name, path: sv.path, args: sv.args,
			// The mock reads $HOME/aemm-config.json when it exists; an
			// empty HOME of our own keeps the machine's out of the test.
			env:        []string{"HOME=" + s.dir},
			disposable: true,
		})
		if err != nil {
			return err
		}
		procs[i] = p
	}
	dial := NetnsDialer(s.nodeNetns())
	for i, sv := range svcs {
		err := pollUntil(ctx, 15*time.Second, 20*time.Millisecond, func() (bool, error) {
			if ok, werr := procs[i].Exited(); ok {
				return false, fmt.Errorf("%s exited (%v):\n%s", sv.name, werr, procs[i].tail(20))
			}
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			c, err := dial(dctx, "tcp", sv.addr)
			if err != nil {
				return false, nil
			}
			c.Close()
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("waiting for %s on %s: %w", sv.name, sv.addr, err)
		}
	}
	return nil
}

func (s *Sandbox) control(ctx context.Context, flavor fakecloud.Flavor, method, path, body string) (*http.Response, error) {
	addr, ok := controlAddrs[flavor]
	if !ok {
		return nil, fmt.Errorf("no fake %q upstream (want %q or %q)", flavor, fakecloud.GCP, fakecloud.Azure)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := netnsHTTPClient(s.cloudNetns()).Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling fakecloud %s control: %w", flavor, err)
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("fakecloud %s control %s %s: %s", flavor, method, path, resp.Status)
	}
	return resp, nil
}

// CloudRecords returns every request the fake GCP or Azure upstream has
// received since the start or the last ResetCloudRecords, in order.
func (s *Sandbox) CloudRecords(ctx context.Context, flavor fakecloud.Flavor) ([]fakecloud.Record, error) {
	resp, err := s.control(ctx, flavor, http.MethodGet, "/records", "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var recs []fakecloud.Record
	if err := json.NewDecoder(resp.Body).Decode(&recs); err != nil {
		return nil, fmt.Errorf("decoding fakecloud records: %w", err)
	}
	return recs, nil
}

// ResetCloudRecords forgets the requests the fake upstream has seen.
func (s *Sandbox) ResetCloudRecords(ctx context.Context, flavor fakecloud.Flavor) error {
	resp, err := s.control(ctx, flavor, http.MethodDelete, "/records", "")
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// SetGCPValue changes a leaf of the fake GCP metadata (a full path such as
// /computeMetadata/v1/instance/attributes/cluster-name), which ends the
// wait_for_change long-polls on it.
func (s *Sandbox) SetGCPValue(ctx context.Context, path, value string) error {
	resp, err := s.control(ctx, fakecloud.GCP, http.MethodPut, "/value?path="+url.QueryEscape(path), value)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// SetCloudQuirks replaces the quirks of the fake GCP or Azure upstream
// (a Range-honouring upstream, a silent resolver); they stay until the
// next call.
func (s *Sandbox) SetCloudQuirks(ctx context.Context, flavor fakecloud.Flavor, q fakecloud.Quirks) error {
	return s.controlJSON(ctx, flavor, http.MethodPut, "/quirks", q)
}

// AddCloudFault makes the fake upstream answer the next f.Count requests
// for f.Path with f.Status.
func (s *Sandbox) AddCloudFault(ctx context.Context, flavor fakecloud.Flavor, f fakecloud.Fault) error {
	return s.controlJSON(ctx, flavor, http.MethodPost, "/faults", f)
}

// ClearCloudFaults drops the faults not used up yet.
func (s *Sandbox) ClearCloudFaults(ctx context.Context, flavor fakecloud.Flavor) error {
	resp, err := s.control(ctx, flavor, http.MethodDelete, "/faults", "")
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

func (s *Sandbox) controlJSON(ctx context.Context, flavor fakecloud.Flavor, method, path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	resp, err := s.control(ctx, flavor, method, path, string(b))
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

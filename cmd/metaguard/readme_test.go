package main

import (
	"os"
	"strings"
	"testing"

	"metaguard.dev/metaguard/proxy/policy"
)

// TestREADMEPoliciesAreValid keeps the documentation honest: every policy
// shown in the README must pass the validator an operator will run it
// through.
func TestREADMEPoliciesAreValid(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := 0
	for _, chunk := range strings.Split(string(data), "```yaml\n")[1:] {
		block, _, _ := strings.Cut(chunk, "```")
		if !strings.HasPrefix(block, "apiVersion: "+policy.APIVersion) {
			continue
		}
		blocks++
		if _, err := policy.Parse("README block", []byte(block)); err != nil {
			t.Errorf("a README policy does not validate:\n%v\n%s", err, block)
		}
	}
	if blocks < 3 {
		t.Errorf("found %d policies in the README, want the AWS, GCP and Azure examples", blocks)
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// result is what podclient prints.
type result struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	Error  string `json:"error,omitempty"`
	// Role and AccessKeyID are set by aws-creds.
	Role        string `json:"role,omitempty"`
	AccessKeyID string `json:"access_key_id,omitempty"`
}

func main() { os.Exit(run(os.Args[1:], os.Stdout)) }

func run(argv []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("podclient", flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "IMDS endpoint URL (default: the SDK's, http://169.254.169.254)")
	noFallback := fs.Bool("no-fallback", false, "fail instead of falling back to IMDSv1 when no token can be had")
	timeout := fs.Duration("timeout", 10*time.Second, "overall deadline")
	if err := fs.Parse(argv); err != nil || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: podclient [-endpoint URL] [-no-fallback] aws-get PATH | aws-dynamic PATH | aws-userdata | aws-region | aws-creds | sleep | get URL | probe URL INTERVAL COUNT")
		return 2
	}
	opts := imds.Options{Endpoint: *endpoint}
	if *noFallback {
		opts.EnableFallback = aws.FalseTernary
	}
	client := imds.New(opts)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	args := fs.Args()
	if workloadCommands[args[0]] {
		return runWorkload(args, *timeout, stdout)
	}
	var res result
	switch {
	case args[0] == "aws-get" && len(args) == 2:
		res = content(client.GetMetadata(ctx, &imds.GetMetadataInput{Path: args[1]}))
	case args[0] == "aws-dynamic" && len(args) == 2:
		out, err := client.GetDynamicData(ctx, &imds.GetDynamicDataInput{Path: args[1]})
		if err != nil {
			res = failure(err)
		} else {
			res = read(out.Content)
		}
	case args[0] == "aws-userdata" && len(args) == 1:
		out, err := client.GetUserData(ctx, &imds.GetUserDataInput{})
		if err != nil {
			res = failure(err)
		} else {
			res = read(out.Content)
		}
	case args[0] == "aws-region" && len(args) == 1:
		out, err := client.GetRegion(ctx, &imds.GetRegionInput{})
		if err != nil {
			res = failure(err)
		} else {
			res = result{OK: true, Body: out.Region}
		}
	case args[0] == "aws-creds" && len(args) == 1:
		res = credentials(ctx, client)
	default:
		fmt.Fprintf(os.Stderr, "podclient: unknown command %q\n", strings.Join(args, " "))
		return 2
	}
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		return 1
	}
	return 0
}

func content(out *imds.GetMetadataOutput, err error) result {
	if err != nil {
		return failure(err)
	}
	return read(out.Content)
}

func read(rc io.ReadCloser) result {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return failure(err)
	}
	return result{OK: true, Body: string(b)}
}

// failure keeps the HTTP status the SDK saw, so a test can tell metaguard's
// 403 from a connection failure.
func failure(err error) result {
	res := result{Error: err.Error()}
	var se interface{ HTTPStatusCode() int }
	if errors.As(err, &se) {
		res.Status = se.HTTPStatusCode()
	}
	return res
}

func credentials(ctx context.Context, client *imds.Client) result {
	list := content(client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "iam/security-credentials/"}))
	if !list.OK {
		return list
	}
	role, _, _ := strings.Cut(strings.TrimSpace(list.Body), "\n")
	if role == "" {
		return result{Error: "no instance role listed"}
	}
	doc := content(client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "iam/security-credentials/" + role}))
	if !doc.OK {
		doc.Role = role
		return doc
	}
	var creds struct {
		Code        string
		AccessKeyID string `json:"AccessKeyId"`
	}
	if err := json.Unmarshal([]byte(doc.Body), &creds); err != nil {
		return result{Role: role, Error: fmt.Sprintf("decoding credentials: %v", err)}
	}
	if creds.Code != "Success" || creds.AccessKeyID == "" {
		return result{Role: role, Error: fmt.Sprintf("credentials not usable: code %q", creds.Code)}
	}
	return result{OK: true, Role: role, AccessKeyID: creds.AccessKeyID}
}

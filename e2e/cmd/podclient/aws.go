package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

func awsClient(g globals) *imds.Client {
	opts := imds.Options{Endpoint: g.endpoint}
	if g.noFallback {
		opts.EnableFallback = aws.FalseTernary
	}
	return imds.New(opts)
}

func awsGet(ctx context.Context, g globals, args []string) (result, error) {
	if err := wantArgs(args, 1); err != nil {
		return result{}, err
	}
	return content(awsClient(g).GetMetadata(ctx, &imds.GetMetadataInput{Path: args[0]})), nil
}

func awsDynamic(ctx context.Context, g globals, args []string) (result, error) {
	if err := wantArgs(args, 1); err != nil {
		return result{}, err
	}
	out, err := awsClient(g).GetDynamicData(ctx, &imds.GetDynamicDataInput{Path: args[0]})
	if err != nil {
		return failure(err), nil
	}
	return read(out.Content), nil
}

func awsUserData(ctx context.Context, g globals, args []string) (result, error) {
	if err := wantArgs(args, 0); err != nil {
		return result{}, err
	}
	out, err := awsClient(g).GetUserData(ctx, &imds.GetUserDataInput{})
	if err != nil {
		return failure(err), nil
	}
	return read(out.Content), nil
}

func awsRegion(ctx context.Context, g globals, args []string) (result, error) {
	if err := wantArgs(args, 0); err != nil {
		return result{}, err
	}
	out, err := awsClient(g).GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil {
		return failure(err), nil
	}
	return result{OK: true, Body: out.Region}, nil
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

// awsCreds reads the credentials of the instance role the way the SDK's
// ec2rolecreds provider does (list the role, then fetch it); keys in the
// output, secrets not.
func awsCreds(ctx context.Context, g globals, args []string) (result, error) {
	if err := wantArgs(args, 0); err != nil {
		return result{}, err
	}
	client := awsClient(g)
	list := content(client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "iam/security-credentials/"}))
	if !list.OK {
		return list, nil
	}
	role, _, _ := strings.Cut(strings.TrimSpace(list.Body), "\n")
	if role == "" {
		return result{Error: "no instance role listed"}, nil
	}
	doc := content(client.GetMetadata(ctx, &imds.GetMetadataInput{Path: "iam/security-credentials/" + role}))
	if !doc.OK {
		doc.Role = role
		return doc, nil
	}
	var creds struct {
		Code        string
		AccessKeyID string `json:"AccessKeyId"`
	}
	if err := json.Unmarshal([]byte(doc.Body), &creds); err != nil {
		return result{Role: role, Error: fmt.Sprintf("decoding credentials: %v", err)}, nil
	}
	if creds.Code != "Success" || creds.AccessKeyID == "" {
		return result{Role: role, Error: fmt.Sprintf("credentials not usable: code %q", creds.Code)}, nil
	}
	return result{OK: true, Role: role, AccessKeyID: creds.AccessKeyID}, nil
}

//go:build tools

// Package tools pins github.com/aws/amazon-ec2-metadata-mock, the AWS IMDS
// emulator the e2e sandbox serves on 169.254.169.254. Its version lives in
// this module's go.mod so that the tool never touches metaguard's own
// dependencies; e2e/tools/tools.mk builds its command into bin/.
package tools

import _ "github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock"

// Helm for tests: the helm command built from the helm.sh/helm/v4 module
// at the version go.mod pins (`make test-apiserver`, into target/kube/bin),
// so the tests lint, render and apply deploy/helm/portcullis with the real
// tool. Test tooling only: the product is Rust. The same main as
// helm.sh/helm/v4/cmd/helm (which is a main package, so it cannot be
// imported).
package main

import (
	"errors"
	"log/slog"
	"os"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"
)

func main() {
	// The field manager name of server-side applies, as the real helm sets it.
	kube.ManagedFieldsManager = "helm"

	cmd, err := helmcmd.NewRootCmd(os.Stdout, os.Args[1:], helmcmd.SetupLogging)
	if err != nil {
		slog.Warn("command failed", slog.Any("error", err))
		os.Exit(1)
	}
	if err := cmd.Execute(); err != nil {
		if cerr, ok := errors.AsType[helmcmd.CommandError](err); ok {
			os.Exit(cerr.ExitCode)
		}
		os.Exit(1)
	}
}

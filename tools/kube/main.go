// Command kube-apiserver is Kubernetes' own API server, built from the
// module proxy for the tests (shared/kubetest starts it).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/streamspace-dev/functions/shared/kubetest"
)

// demoPool is the Deployment the local run lets the autoscale function
// scale: a template warm pool, opted in (docs/autoscale.md, Targets).
const (
	demoPool     = "demo-pool"
	poolTemplate = "firefox"
)

// localKube is the Kubernetes API the local autoscale function uses.
type localKube struct {
	// Kubeconfig is the file the function reads (KUBECONFIG).
	Kubeconfig string
	// Status is the banner's line: on, and where, or off, and why.
	Status  string
	cluster *kubetest.Cluster
}

// startKube gives the local function a Kubernetes API: the one KUBECONFIG
// names when it is set, else a kube-apiserver and etcd of its own when
// scripts/tools has built them, with namespace's demo Deployment, where the
// function acts as the overlay's ServiceAccount with the overlay's Roles
// (grantOverlay). As deployed, namespace is the sessions' and the
// ServiceAccount lives in the functions' own namespace. Without either,
// autoscaling is off and Status says why.
func startKube(ctx context.Context, environ map[string]string, namespace, dir string, m *Manifests) (*localKube, error) {
	if kc := environ["KUBECONFIG"]; kc != "" {
		return &localKube{Kubeconfig: kc, Status: fmt.Sprintf("on: the cluster KUBECONFIG names (%s), namespace %s", kc, namespace)}, nil
	}
	c, err := kubetest.Run()
	if err != nil {
		return &localKube{Status: fmt.Sprintf("off: no KUBECONFIG, and no local kube-apiserver (%v)", err)}, nil
	}
	lk := &localKube{cluster: c}
	if err := demoDeployment(ctx, c, namespace); err != nil {
		c.Stop()
		return nil, fmt.Errorf("local kube-apiserver: %w", err)
	}
	token, account, err := grantOverlay(ctx, c, namespace, m)
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("local kube-apiserver: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: c.Config.Host, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["local"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "local", Namespace: namespace}
	cfg.CurrentContext = "local"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		c.Stop()
		return nil, err
	}
	lk.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, lk.Kubeconfig); err != nil {
		c.Stop()
		return nil, err
	}
	lk.Status = fmt.Sprintf("on: local kube-apiserver %s (kubeconfig %s, ServiceAccount %s with the overlay's Role), namespace %s, Deployment %s (warm pool of template %s, 3 replicas)",
		c.Config.Host, lk.Kubeconfig, account, namespace, demoPool, poolTemplate)
	return lk, nil
}

// functionAccount is the ServiceAccount the local function acts as; the
// all-in-one overlay's RoleBinding names it (deploy/overlays/all-in-one).
const functionAccount = "streamspace"

// grantOverlay applies the overlay's Roles and the RoleBindings to
// functionAccount, as deploy/ grants them in a cluster: the Roles and
// RoleBindings in namespace, the sessions' (the overlay's are in
// StreamSpace's), and the ServiceAccount in the namespace the RoleBinding's
// subject names, the functions' own. It returns a token of that
// ServiceAccount once its access has taken effect, and its namespace/name.
// The function then has exactly the access the overlay gives it: what it
// lacks there it lacks here.
func grantOverlay(ctx context.Context, c *kubetest.Cluster, namespace string, m *Manifests) (token, account string, err error) {
	for _, role := range m.Roles {
		role = role.DeepCopy()
		role.Namespace = namespace
		if _, err := c.Client.RbacV1().Roles(namespace).Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", "", fmt.Errorf("role %s: %w", role.Name, err)
		}
	}
	saNamespace := ""
	for _, rb := range m.RoleBindings {
		rb = rb.DeepCopy()
		rb.Namespace = namespace
		var subjects []rbacv1.Subject
		for _, s := range rb.Subjects {
			if s.Kind == rbacv1.ServiceAccountKind && s.Name == functionAccount {
				if s.Namespace == "" {
					s.Namespace = namespace
				}
				if saNamespace != "" && s.Namespace != saNamespace {
					return "", "", fmt.Errorf("rolebinding %s: ServiceAccount %s in %s, others in %s", rb.Name, functionAccount, s.Namespace, saNamespace)
				}
				saNamespace = s.Namespace
				subjects = append(subjects, s)
			}
		}
		if len(subjects) == 0 {
			continue
		}
		rb.Subjects = subjects
		if _, err := c.Client.RbacV1().RoleBindings(namespace).Create(ctx, rb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return "", "", fmt.Errorf("rolebinding %s: %w", rb.Name, err)
		}
	}
	if saNamespace == "" {
		return "", "", fmt.Errorf("the overlay binds no Role to the ServiceAccount %s", functionAccount)
	}
	account = saNamespace + "/" + functionAccount
	if err := createNamespace(ctx, c, saNamespace); err != nil {
		return "", "", err
	}
	_, err = c.Client.CoreV1().ServiceAccounts(saNamespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: functionAccount, Namespace: saNamespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return "", "", err
	}
	expiry := int64(tokenTTL.Seconds())
	tr, err := c.Client.CoreV1().ServiceAccounts(saNamespace).CreateToken(ctx, functionAccount,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		return "", "", fmt.Errorf("token for %s: %w", account, err)
	}
	cfg := rest.CopyConfig(c.Config)
	cfg.BearerToken = tr.Status.Token
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", "", err
	}
	// The API server's RBAC cache sees a new binding a moment later.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		_, err := cs.CoreV1().Pods(namespace).List(wctx, metav1.ListOptions{Limit: 1})
		if err == nil {
			return tr.Status.Token, account, nil
		}
		select {
		case <-wctx.Done():
			return "", "", fmt.Errorf("the overlay's Role does not take effect: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// demoDeployment creates namespace and the demo warm pool in it. The API
// server runs no controllers, so the Deployment gets no pods: its replica
// count is what the demo shows moving.
func demoDeployment(ctx context.Context, c *kubetest.Cluster, namespace string) error {
	if err := createNamespace(ctx, c, namespace); err != nil {
		return err
	}
	replicas := int32(3)
	sel := map[string]string{"app": demoPool}
	_, err := c.Client.AppsV1().Deployments(namespace).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: demoPool, Namespace: namespace, Labels: map[string]string{
			"streamspace.io/autoscale": "enabled", "streamspace.io/template-pool": poolTemplate,
		}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "desktop", Image: "lscr.io/linuxserver/firefox:latest"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// createNamespace creates namespace unless it exists.
func createNamespace(ctx context.Context, c *kubetest.Cluster, namespace string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("namespace %s: %w", namespace, err)
	}
	return nil
}

// Stop ends the local API server, when the runner started one.
func (k *localKube) Stop() {
	if k != nil && k.cluster != nil {
		k.cluster.Stop()
	}
}

//! Who is asking, and whether RBAC lets them: Kubernetes' authorization as the API server runs it,
//! over the ClusterRoles, Roles and bindings stored in the fake (rbac.authorization.k8s.io/v1).
//!
//! * Request attributes as the API server's `RequestInfo` derives them: the verb from the method
//!   (`list`/`watch` for collections, `watch` with `?watch=true`, `deletecollection`), the
//!   namespace and name from the path, and for a list or watch the name from a
//!   `fieldSelector=metadata.name=<x>` (so `resourceNames` can grant a one-object watch).
//! * A rule allows a request when its `verbs`, `apiGroups` and `resources` (`<plural>/<sub>` for a
//!   subresource, `*`, `*/<sub>`) match, and its `resourceNames`, if any, hold the request's name.
//!   ClusterRoleBindings grant everywhere; RoleBindings in the request's namespace only.
//! * A service account is `system:serviceaccount:<ns>:<name>`, in the groups
//!   `system:serviceaccounts`, `system:serviceaccounts:<ns>` and `system:authenticated`.
//!   Discovery paths (`/api`, `/apis`, `/version`, `/openapi`) are open to every authenticated
//!   user, as the default `system:discovery` binding makes them.
//! * A denial is the API server's 403 `Status`, with its message.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// The cluster admin the default kubeconfig speaks for (`system:masters` bypasses RBAC).
    pub fn admin() -> User {
        User {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// What a resource request asks for, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    /// `""` at the cluster scope.
    pub namespace: String,
    /// `""` when none (a list without a name selector, a create).
    pub name: String,
}

impl Attributes {
    /// `resource` or `resource/subresource`.
    fn combined(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The API server's 403 body for `user`.
    pub fn forbidden(&self, user: &User) -> Value {
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        let why = format!(
            "User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
            user.name,
            self.verb,
            self.combined(),
            self.group
        );
        let gr = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        let message = if self.name.is_empty() {
            format!("{gr} is forbidden: {why}")
        } else {
            format!("{gr} \"{}\" is forbidden: {why}", self.name)
        };
        let mut details = json!({"group": self.group, "kind": self.resource});
        if !self.name.is_empty() {
            details["name"] = self.name.clone().into();
        }
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": "Forbidden",
            "details": details, "code": 403,
        })
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let has = |field: &str, want: &str| {
        strings(&rule[field])
            .iter()
            .any(|x| *x == "*" || *x == want)
    };
    let resource_ok = strings(&rule["resources"]).iter().any(|r| {
        *r == "*"
            || *r == a.combined()
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    let names = strings(&rule["resourceNames"]);
    has("verbs", &a.verb)
        && has("apiGroups", &a.group)
        && resource_ok
        && (names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str())))
}

fn subject_is(subject: &Value, user: &User) -> bool {
    let name = subject["name"].as_str().unwrap_or("");
    match subject["kind"].as_str() {
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        _ => false,
    }
}

/// The RBAC objects in force: `(namespace, name) -> object` for each kind.
#[derive(Debug, Default)]
pub struct Policy<'a> {
    pub cluster_roles: Option<&'a BTreeMap<(String, String), Value>>,
    pub cluster_role_bindings: Option<&'a BTreeMap<(String, String), Value>>,
    pub roles: Option<&'a BTreeMap<(String, String), Value>>,
    pub role_bindings: Option<&'a BTreeMap<(String, String), Value>>,
}

impl Policy<'_> {
    /// Whether RBAC allows `user` to do `a`.
    pub fn allows(&self, user: &User, a: &Attributes) -> bool {
        if user.is_admin() {
            return true;
        }
        let role_rules = |kind: &str, ns: &str, name: &str| -> Vec<&Value> {
            let (map, key) = match kind {
                "ClusterRole" => (self.cluster_roles, (String::new(), name.to_owned())),
                "Role" => (self.roles, (ns.to_owned(), name.to_owned())),
                _ => return Vec::new(),
            };
            map.and_then(|m| m.get(&key))
                .and_then(|r| r["rules"].as_array())
                .map(|rules| rules.iter().collect())
                .unwrap_or_default()
        };
        let bound = |b: &Value| {
            b["subjects"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| subject_is(s, user)))
        };
        let cluster_wide = self
            .cluster_role_bindings
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|b| bound(b) && b["roleRef"]["kind"] == "ClusterRole")
            .flat_map(|b| {
                role_rules(
                    "ClusterRole",
                    "",
                    b["roleRef"]["name"].as_str().unwrap_or(""),
                )
            });
        let in_namespace = self
            .role_bindings
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|((ns, _), b)| !a.namespace.is_empty() && *ns == a.namespace && bound(b))
            .flat_map(|((ns, _), b)| {
                role_rules(
                    b["roleRef"]["kind"].as_str().unwrap_or(""),
                    ns,
                    b["roleRef"]["name"].as_str().unwrap_or(""),
                )
            });
        cluster_wide.chain(in_namespace).any(|r| rule_allows(r, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn objects(yaml: &str) -> BTreeMap<(String, String), Value> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .map(|v| {
                let key = (
                    v["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                    v["metadata"]["name"].as_str().unwrap().to_owned(),
                );
                (key, v)
            })
            .collect()
    }

    #[test]
    fn bindings_grant_their_rules_where_they_apply() {
        let cr = objects(
            "metadata: {name: read}\nrules:\n- {apiGroups: [security.istio.io], resources: [authorizationpolicies], verbs: [list, watch]}\n\
             - {apiGroups: [security.istio.io], resources: [authorizationpolicies/status], verbs: [patch]}\n",
        );
        let crb = objects(
            "metadata: {name: read}\nroleRef: {kind: ClusterRole, name: read}\nsubjects: [{kind: ServiceAccount, name: waypoint, namespace: demo}]\n",
        );
        let roles = objects(
            "metadata: {name: mesh, namespace: istio-system}\nrules: [{apiGroups: [''], resources: [configmaps], resourceNames: [istio], verbs: [get, list, watch]}]\n",
        );
        let rbs = objects(
            "metadata: {name: mesh, namespace: istio-system}\nroleRef: {kind: Role, name: mesh}\nsubjects: [{kind: ServiceAccount, name: waypoint, namespace: demo}]\n",
        );
        let p = Policy {
            cluster_roles: Some(&cr),
            cluster_role_bindings: Some(&crb),
            roles: Some(&roles),
            role_bindings: Some(&rbs),
        };
        let sa = User::service_account("demo", "waypoint");
        let other = User::service_account("demo", "other");
        let list = attrs(
            "list",
            "security.istio.io",
            "authorizationpolicies",
            "",
            "",
            "",
        );
        assert!(p.allows(&sa, &list));
        assert!(!p.allows(&other, &list));
        assert!(p.allows(&User::admin(), &attrs("delete", "", "pods", "", "x", "y")));
        assert!(!p.allows(
            &sa,
            &attrs(
                "get",
                "security.istio.io",
                "authorizationpolicies",
                "",
                "demo",
                "x"
            )
        ));
        assert!(p.allows(
            &sa,
            &attrs(
                "patch",
                "security.istio.io",
                "authorizationpolicies",
                "status",
                "other",
                "x"
            )
        ));
        // resourceNames: only the one ConfigMap, only in its namespace, and not an unnamed list.
        assert!(p.allows(
            &sa,
            &attrs("watch", "", "configmaps", "", "istio-system", "istio")
        ));
        assert!(!p.allows(
            &sa,
            &attrs("watch", "", "configmaps", "", "istio-system", "")
        ));
        assert!(!p.allows(
            &sa,
            &attrs("get", "", "configmaps", "", "istio-system", "other")
        ));
        assert!(!p.allows(&sa, &attrs("get", "", "configmaps", "", "demo", "istio")));
    }

    #[test]
    fn the_403_reads_as_the_api_servers() {
        let a = attrs(
            "patch",
            "security.istio.io",
            "authorizationpolicies",
            "status",
            "other",
            "deny",
        );
        let body = a.forbidden(&User::service_account("demo", "waypoint"));
        assert_eq!(
            body["message"],
            "authorizationpolicies.security.istio.io \"deny\" is forbidden: User \"system:serviceaccount:demo:waypoint\" \
             cannot patch resource \"authorizationpolicies/status\" in API group \"security.istio.io\" in the namespace \"other\""
        );
        assert_eq!(
            body["details"],
            json!({"name": "deny", "group": "security.istio.io", "kind": "authorizationpolicies"})
        );
        let list = attrs("list", "", "pods", "", "", "");
        assert_eq!(
            list.forbidden(&User::admin())["message"],
            "pods is forbidden: User \"kubernetes-admin\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
        );
    }
}

//! Properties of the matchers and of path normalization on arbitrary input.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use policy_engine::path::{self, PathNormalization, PathTemplate};
use policy_engine::{
    Action, AuthorizerBuilder, Binding, HttpRequest, NoHeaders, OperationSpec, PeerIdentity,
    PolicySpec, Request, RuleSpec, SourceSpec,
};
use proptest::prelude::*;

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

/// Paths built from the pieces that make normalization interesting.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("\\".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%2F".to_owned()),
        Just("%5c".to_owned()),
        Just("%".to_owned()),
        Just("%%30".to_owned()),
        Just("%41".to_owned()),
        Just("?q=/../x".to_owned()),
        "[a-z]{1,3}",
        "[ -~]{1,2}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn path_policy(pattern: String) -> policy_engine::Authorizer {
    let mut b = AuthorizerBuilder::new();
    b.add(
        PolicySpec {
            namespace: "ns".into(),
            name: "p".into(),
            action: Some(Action::Allow),
            rules: Some(vec![RuleSpec {
                to: Some(vec![Some(OperationSpec {
                    paths: vec![pattern],
                    ..Default::default()
                })]),
                ..Default::default()
            }]),
            ..Default::default()
        },
        Binding::Waypoint,
    );
    b.build()
}

fn allows(auth: &policy_engine::Authorizer, path: &str) -> bool {
    let req = Request {
        peer: None,
        source_ip: None,
        remote_ip: None,
        destination_ip: None,
        destination_port: None,
        sni: None,
        jwt: None,
        http: Some(HttpRequest {
            method: "GET",
            host: "h",
            path,
            headers: &NoHeaders,
        }),
    };
    auth.evaluate(&req, None).allowed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalization_is_idempotent(p in tricky_path()) {
        for mode in MODES {
            if let Ok(once) = path::normalize(&p, mode) {
                let twice = path::normalize(&once, mode).map(Cow::into_owned);
                prop_assert_eq!(Ok(once.clone().into_owned()), twice, "mode {:?} input {:?}", mode, p);
            }
        }
    }

    #[test]
    fn normalized_paths_have_no_dot_segments(p in tricky_path()) {
        if let Ok(n) = path::normalize(&p, PathNormalization::Base) {
            let path_part = n.split('?').next().unwrap_or("");
            prop_assert!(path_part.starts_with('/'));
            for seg in path_part.split('/') {
                prop_assert!(seg != "." && seg != "..", "{:?} -> {:?}", p, n);
            }
            prop_assert!(!path_part.contains('\\'));
        }
    }

    #[test]
    fn templates_never_panic_and_match_their_filling(t in "(/(\\{\\*\\}|\\{\\*\\*\\}|[a-z]{0,3}|\\*)){1,5}/?", p in tricky_path()) {
        if let Ok(tpl) = PathTemplate::parse(&t) {
            let _ = tpl.matches(&p);
            let filled = t.replace("{**}", "x/y").replace("{*}", "seg");
            prop_assert!(tpl.matches(&filled), "{} should match {}", t, filled);
        }
    }

    #[test]
    fn string_forms_behave(value in "[a-z/]{1,8}", other in "[a-z/]{0,8}") {
        let joined = format!("{value}{other}");
        let exact = path_policy(value.clone());
        prop_assert!(allows(&exact, &value));
        prop_assert_eq!(allows(&exact, &joined), other.is_empty());
        let prefix = path_policy(format!("{value}*"));
        let suffix = path_policy(format!("*{value}"));
        let reversed = format!("{other}{value}");
        prop_assert!(allows(&prefix, &joined));
        prop_assert!(allows(&suffix, &reversed));
        prop_assert_eq!(allows(&path_policy("*".into()), &other), !other.is_empty());
    }

    #[test]
    fn evaluation_never_panics(principal in "\\PC{0,40}", ns in "[a-z*().]{1,6}", host in "\\PC{0,20}", p in tricky_path()) {
        let mut b = AuthorizerBuilder::new();
        b.add(
            PolicySpec {
                namespace: "ns".into(),
                name: "p".into(),
                action: Some(Action::Deny),
                rules: Some(vec![RuleSpec {
                    from: Some(vec![Some(SourceSpec { namespaces: vec![ns], principals: vec![principal.clone()], ..Default::default() })]),
                    to: Some(vec![Some(OperationSpec { hosts: vec![host.clone()], paths: vec![p.clone()], ..Default::default() })]),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            Binding::Waypoint,
        );
        let auth = b.build();
        let peer = PeerIdentity::new(&principal);
        let normalized = path::normalize(&p, PathNormalization::Base).unwrap_or(Cow::Borrowed("/"));
        let req = Request {
            peer: Some(&peer), source_ip: None, remote_ip: None, destination_ip: None,
            destination_port: Some(80), sni: None, jwt: None,
            http: Some(HttpRequest { method: "GET", host: &host, path: &normalized, headers: &NoHeaders }),
        };
        let _ = auth.evaluate(&req, None).to_string();
    }
}

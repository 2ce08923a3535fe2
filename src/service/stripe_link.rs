//! What linking a Stripe account takes beyond any link: its id, API key and endpoint
//! secrets in Stripe's formats, the types it mirrors and the types whose same-second
//! events are re-fetched. The HTTP document states the same rules (`http::accounts`),
//! so what the document allows is exactly what this accepts.

use super::ServiceError;
use crate::domain::stripe::{ObjectType, StripeCredentials, StripeLink};
use crate::domain::AccessToken;

/// The most endpoint secrets one account may have (the current one and, while Stripe
/// rolls an endpoint's secret, the previous one).
pub const MAX_WEBHOOK_SECRETS: usize = 2;

/// `item_id` of a Stripe account: `acct_` and 1 to 64 letters and digits.
pub const ACCOUNT_ID_PATTERN: &str = "^acct_[0-9A-Za-z]{1,64}$";
/// `access_token` of a Stripe account: a secret or restricted key, test or live.
pub const API_KEY_PATTERN: &str = "^(sk|rk)_(test|live)_[0-9A-Za-z]{1,240}$";
/// A webhook endpoint secret.
pub const WEBHOOK_SECRET_PATTERN: &str = "^whsec_[0-9A-Za-z]{8,200}$";

/// What a Stripe link brings besides the common fields.
#[derive(Clone, Debug, Default)]
pub struct StripeLinkInput {
    /// The endpoint secrets (`whsec_…`), one or two.
    pub webhook_secrets: Vec<String>,
    /// The types to mirror (`None`: all of them).
    pub object_types: Option<Vec<String>>,
    /// The types re-fetched on a same-second tie (`None`: subscriptions, invoices,
    /// payment intents).
    pub refetch_on_tie: Option<Vec<String>>,
    /// A Connect account reached with its platform's key.
    pub connect: bool,
}

/// Whether `text` is `prefix` followed by `min..=max` ASCII letters and digits.
fn alnum_after(text: &str, prefix: &str, min: usize, max: usize) -> bool {
    text.strip_prefix(prefix).is_some_and(|rest| {
        (min..=max).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn types(field: &str, names: &[String]) -> Result<Vec<ObjectType>, ServiceError> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let object_type = ObjectType::parse(name).ok_or_else(|| {
            ServiceError::invalid_field(format!(
                "{field}[{i}]: {:?} is not a mirrored type (types: {})",
                name.chars().take(40).collect::<String>(),
                ObjectType::names()
            ))
        })?;
        if out.contains(&object_type) {
            return Err(ServiceError::invalid_field(format!(
                "{field}[{i}]: {object_type} is listed twice"
            )));
        }
        out.push(object_type);
    }
    Ok(out)
}

/// Checks a Stripe link; returns its settings and its credentials as the account's
/// access token.
pub fn validate(
    item_id: &str,
    api_key: &str,
    input: &StripeLinkInput,
) -> Result<(StripeLink, AccessToken), ServiceError> {
    if !alnum_after(item_id, "acct_", 1, 64) {
        return Err(ServiceError::invalid_field(
            "item_id: a Stripe account id is acct_ followed by 1 to 64 letters and digits",
        ));
    }
    let livemode = if alnum_after(api_key, "sk_live_", 1, 240)
        || alnum_after(api_key, "rk_live_", 1, 240)
    {
        true
    } else if alnum_after(api_key, "sk_test_", 1, 240) || alnum_after(api_key, "rk_test_", 1, 240) {
        false
    } else {
        return Err(ServiceError::invalid_field(
            "access_token: a Stripe secret (sk_) or restricted (rk_) key, test or live, is \
             expected (a publishable pk_ key cannot read objects)",
        ));
    };
    let secrets = &input.webhook_secrets;
    if secrets.is_empty() || secrets.len() > MAX_WEBHOOK_SECRETS {
        return Err(ServiceError::invalid_field(format!(
            "webhook_secrets: one endpoint secret, or two while one is rolled (got {})",
            secrets.len()
        )));
    }
    for (i, secret) in secrets.iter().enumerate() {
        if !alnum_after(secret, "whsec_", 8, 200) {
            return Err(ServiceError::invalid_field(format!(
                "webhook_secrets[{i}]: an endpoint secret is whsec_ followed by 8 to 200 \
                 letters and digits"
            )));
        }
        if secrets[..i].contains(secret) {
            return Err(ServiceError::invalid_field(format!(
                "webhook_secrets[{i}]: listed twice"
            )));
        }
    }
    let object_types = match &input.object_types {
        Some(names) if names.is_empty() => {
            return Err(ServiceError::invalid_field(
                "object_types: at least one type (leave the field out for all of them)",
            ))
        }
        Some(names) => types("object_types", names)?,
        None => ObjectType::ALL.to_vec(),
    };
    let refetch_on_tie = match &input.refetch_on_tie {
        Some(names) => types("refetch_on_tie", names)?,
        None => ObjectType::REFETCH_ON_TIE.to_vec(),
    };
    let link = StripeLink {
        types: object_types,
        refetch_on_tie,
        connect: input.connect,
        livemode,
    };
    let credentials = StripeCredentials {
        api_key: api_key.to_owned(),
        webhook_secrets: secrets.clone(),
    };
    Ok((link, credentials.to_token()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> StripeLinkInput {
        StripeLinkInput {
            webhook_secrets: vec!["whsec_abcdefgh12".into()],
            ..StripeLinkInput::default()
        }
    }

    fn refusal(item: &str, key: &str, input: &StripeLinkInput) -> String {
        match validate(item, key, input) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("accepted {item} {key} {input:?}"),
        }
    }

    #[test]
    fn a_valid_link_gets_defaults_and_sealable_credentials() {
        let (link, token) = validate("acct_1Abc", "rk_live_xyz", &input()).expect("valid");
        assert!(link.livemode);
        assert_eq!(link.types, ObjectType::ALL.to_vec());
        assert_eq!(link.refetch_on_tie, ObjectType::REFETCH_ON_TIE.to_vec());
        let credentials = StripeCredentials::from_token(&token).expect("readable");
        assert_eq!(credentials.api_key, "rk_live_xyz");
        assert_eq!(
            credentials.webhook_secrets,
            vec!["whsec_abcdefgh12".to_string()]
        );
        assert!(
            !format!("{credentials:?}").contains("rk_live_xyz"),
            "never printed"
        );
        let (link, _) = validate("acct_1", "sk_test_1", &input()).expect("valid");
        assert!(!link.livemode);
    }

    #[test]
    fn every_refusal_names_its_field() {
        assert!(refusal("acc_1", "sk_test_1", &input()).contains("item_id"));
        assert!(refusal("acct_1", "pk_test_1", &input()).contains("access_token"));
        assert!(refusal("acct_1", "sk_test_", &input()).contains("access_token"));
        let none = StripeLinkInput::default();
        assert!(refusal("acct_1", "sk_test_1", &none).contains("webhook_secrets"));
        let short = StripeLinkInput {
            webhook_secrets: vec!["whsec_1".into()],
            ..input()
        };
        assert!(refusal("acct_1", "sk_test_1", &short).contains("webhook_secrets[0]"));
        let twice = StripeLinkInput {
            webhook_secrets: vec!["whsec_abcdefgh12".into(), "whsec_abcdefgh12".into()],
            ..input()
        };
        assert!(refusal("acct_1", "sk_test_1", &twice).contains("webhook_secrets[1]"));
        let unknown = StripeLinkInput {
            object_types: Some(vec!["widgets".into()]),
            ..input()
        };
        assert!(refusal("acct_1", "sk_test_1", &unknown).contains("object_types[0]"));
        let empty = StripeLinkInput {
            object_types: Some(Vec::new()),
            ..input()
        };
        assert!(refusal("acct_1", "sk_test_1", &empty).contains("object_types"));
        let repeated = StripeLinkInput {
            refetch_on_tie: Some(vec!["invoices".into(), "invoices".into()]),
            ..input()
        };
        assert!(refusal("acct_1", "sk_test_1", &repeated).contains("refetch_on_tie[1]"));
    }
}

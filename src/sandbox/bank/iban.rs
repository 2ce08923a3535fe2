//! Account numbers for completed openings: IBANs with the right length for the market
//! and correct ISO 13616 check digits (mod 97), and a BIC of the bank the IBAN's bank
//! code names, so whatever acctor validates or displays looks like the real thing.
//! National check digits inside the BBAN (Belgium's, France's clé RIB, Spain's DC) are
//! not computed: nothing in acctor reads them.

use rand::Rng;

/// How one country's IBANs look: a fixed bank (and branch) part, then random digits.
struct Format {
    country: &'static str,
    bank: &'static str,
    bic: &'static str,
    digits: usize,
}

/// The markets the bank knows. Others get a generic format under their own country
/// code (see [`generate`]).
const FORMATS: [Format; 7] = [
    Format {
        country: "NL",
        bank: "ABNA",
        bic: "ABNANL2A",
        digits: 10,
    },
    Format {
        country: "DE",
        bank: "37040044",
        bic: "COBADEFFXXX",
        digits: 10,
    },
    Format {
        country: "BE",
        bank: "539",
        bic: "GKCCBEBB",
        digits: 9,
    },
    Format {
        country: "FR",
        bank: "2004101005",
        bic: "PSSTFRPPPAR",
        digits: 13,
    },
    Format {
        country: "ES",
        bank: "21000418",
        bic: "CAIXESBBXXX",
        digits: 12,
    },
    Format {
        country: "GB",
        bank: "NWBK601613",
        bic: "NWBKGB2L",
        digits: 8,
    },
    Format {
        country: "IE",
        bank: "AIBK931152",
        bic: "AIBKIE2D",
        digits: 8,
    },
];

/// The remainder mod 97 of `text` read as ISO 13616 digits (letters are 10..=35).
/// `None` when `text` holds anything but ASCII digits and letters.
fn mod97(text: &str) -> Option<u32> {
    let mut remainder = 0u32;
    for c in text.chars() {
        let value = c.to_digit(36)?;
        remainder = if value < 10 {
            (remainder * 10 + value) % 97
        } else {
            (remainder * 100 + value) % 97
        };
    }
    Some(remainder)
}

/// The two check digits of an IBAN with `country` and `bban`.
fn check_digits(country: &str, bban: &str) -> u32 {
    // `bban` and `country` are built here from ASCII letters and digits only.
    98 - mod97(&format!("{bban}{country}00")).unwrap_or(0)
}

/// Whether `iban` has valid check digits.
#[cfg(test)]
pub(crate) fn is_valid(iban: &str) -> bool {
    if iban.len() < 5 || !iban.is_ascii() {
        return false;
    }
    let (head, bban) = iban.split_at(4);
    mod97(&format!("{bban}{head}")) == Some(1)
}

/// A new IBAN and BIC for an account opened in `market`. An unknown market of two
/// letters gets them as its country code; anything else gets `XX`.
pub(crate) fn generate(market: &str, rng: &mut impl Rng) -> (String, String) {
    let market = market.to_ascii_uppercase();
    let (country, bank, bic, digits) = match FORMATS.iter().find(|f| f.country == market) {
        Some(f) => (f.country.to_owned(), f.bank, f.bic.to_owned(), f.digits),
        None => {
            let country = if market.len() == 2 && market.chars().all(|c| c.is_ascii_uppercase()) {
                market
            } else {
                "XX".to_owned()
            };
            let bic = format!("SBNK{country}2X");
            (country, "SBNK", bic, 10)
        }
    };
    let account: String = (0..digits)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    let bban = format!("{bank}{account}");
    let check = check_digits(&country, &bban);
    (format!("{country}{check:02}{bban}"), bic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn published_ibans_check_out_and_a_typo_does_not() {
        for iban in [
            "NL91ABNA0417164300",
            "DE89370400440532013000",
            "GB29NWBK60161331926819",
            "BE68539007547034",
            "FR1420041010050500013M02606",
        ] {
            assert!(is_valid(iban), "{iban}");
        }
        assert!(!is_valid("NL92ABNA0417164300"));
        assert!(!is_valid("NL91ABNA0417164301"));
        assert!(!is_valid("NL9"));
        assert!(!is_valid("NL91ABNA04171643é0"));
    }

    #[test]
    fn generated_ibans_are_valid_and_as_long_as_the_country_wants() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (market, length, bic) in [
            ("NL", 18, "ABNANL2A"),
            ("de", 22, "COBADEFFXXX"),
            ("BE", 16, "GKCCBEBB"),
            ("FR", 27, "PSSTFRPPPAR"),
            ("ES", 24, "CAIXESBBXXX"),
            ("GB", 22, "NWBKGB2L"),
            ("IE", 22, "AIBKIE2D"),
            ("SE", 18, "SBNKSE2X"),
            ("europe", 18, "SBNKXX2X"),
        ] {
            for _ in 0..50 {
                let (iban, generated_bic) = generate(market, &mut rng);
                assert!(is_valid(&iban), "{market}: {iban}");
                assert_eq!(iban.len(), length, "{market}: {iban}");
                assert_eq!(generated_bic, bic);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_accounts() {
        let draw = || {
            let mut rng = ChaCha8Rng::seed_from_u64(99);
            (0..5)
                .map(|_| generate("NL", &mut rng).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(), draw());
    }
}

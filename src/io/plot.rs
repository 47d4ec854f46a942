//! A learning curve as a standalone SVG (no plotting dependency: a polyline, markers, axes
//! with a few ticks), viewable in any browser.

/// Round "nice" tick step for a span (1, 2 or 5 × 10ᵏ), about five ticks.
fn tick_step(span: f64) -> f64 {
    let raw = (span / 5.0).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Points (x, y) joined in order; non-finite points are skipped.
pub fn learning_curve_svg(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    points: &[(f64, f64)],
) -> String {
    let (w, h) = (640.0, 400.0);
    let (l, r, t, b) = (70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = (0.0f64, 1.0f64, 0.0f64, 1.0f64);
    if !pts.is_empty() {
        x0 = pts
            .iter()
            .map(|p| p.0)
            .fold(f64::INFINITY, f64::min)
            .min(0.0);
        x1 = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        y0 = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        y1 = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if y0 > 0.0 {
            y0 = 0.0;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        if y1 <= y0 {
            y1 = y0 + 1.0;
        }
        let pad = 0.05 * (y1 - y0);
        y1 += pad;
    }
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (w - l - r);
    let sy = |y: f64| h - b - (y - y0) / (y1 - y0) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        escape(title)
    );
    // Axes and ticks.
    s.push_str(&format!(
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - b,
        w - r,
        h - b,
        h - b
    ));
    let xs = tick_step(x1 - x0);
    let mut x = (x0 / xs).ceil() * xs;
    while x <= x1 + 1e-9 {
        s.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#ccc\"/>\
             <text x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n",
            sx(x),
            h - b,
            t,
            h - b + 16.0,
            x
        ));
        x += xs;
    }
    let ys = tick_step(y1 - y0);
    let mut y = (y0 / ys).ceil() * ys;
    while y <= y1 + 1e-9 {
        s.push_str(&format!(
            "<line x1=\"{0}\" y1=\"{1:.1}\" x2=\"{2}\" y2=\"{1:.1}\" stroke=\"#ccc\"/>\
             <text x=\"{3}\" y=\"{4:.1}\" text-anchor=\"end\">{5}</text>\n",
            l,
            sy(y),
            w - r,
            l - 6.0,
            sy(y) + 4.0,
            y
        ));
        y += ys;
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>\n",
        (l + w - r) / 2.0,
        h - 12.0,
        escape(xlabel),
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        escape(ylabel)
    ));
    if !pts.is_empty() {
        let line: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
            line.join(" ")
        ));
        for (x, y) in &pts {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#1f77b4\"/>\n",
                sx(*x),
                sy(*y)
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_should_contain_one_marker_per_finite_point() {
        let svg = learning_curve_svg(
            "t",
            "x",
            "y",
            &[(0.0, 1.0), (200.0, f64::NAN), (400.0, 180.0)],
        );
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(tick_step(1000.0), 200.0);
    }
}

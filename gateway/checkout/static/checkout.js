/* Kassa's hosted checkout, progressively enhanced: the form pays without this script.
   With it: the number grouped as typed, its brand shown, every field checked with the
   core's rules (Luhn, expiry not past, cvc 3 digits or 4 for American Express), errors
   tied to their fields, and one submission only. */
(function () {
  "use strict";
  var form = document.getElementById("pay-form");
  if (!form) { return; }
  var number = document.getElementById("number");
  var expiry = document.getElementById("expiry");
  var cvc = document.getElementById("cvc");
  var brandOut = document.getElementById("brand");
  var button = document.getElementById("pay");
  var submitted = false;

  function digits(text) { return text.replace(/\D/g, ""); }

  // The core's brand table (core_ext validation): leading digits to brand.
  function brandOf(d) {
    if (d.length < 6) { return ""; }
    var p6 = parseInt(d.slice(0, 6), 10), p4 = Math.floor(p6 / 100);
    var p3 = Math.floor(p6 / 1000), p2 = Math.floor(p6 / 10000);
    if (d.charAt(0) === "4") { return "visa"; }
    if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) { return "mastercard"; }
    if (p2 === 34 || p2 === 37) { return "amex"; }
    if (p4 === 6011 || (p3 >= 644 && p3 <= 649) || p2 === 65 ||
        (p6 >= 622126 && p6 <= 622925)) { return "discover"; }
    if (p4 >= 3528 && p4 <= 3589) { return "jcb"; }
    if ((p3 >= 300 && p3 <= 305) || p4 === 3095 || p2 === 36 || p2 === 38 || p2 === 39) {
      return "diners";
    }
    if (p2 === 62) { return "unionpay"; }
    return "";
  }
  var BRAND_NAMES = { visa: "Visa", amex: "Amex", mastercard: "Mastercard",
    discover: "Discover", jcb: "JCB", diners: "Diners", unionpay: "UnionPay" };

  function luhn(d) {
    var sum = 0, double = false;
    for (var i = d.length - 1; i >= 0; i--) {
      var n = d.charCodeAt(i) - 48;
      if (double) { n *= 2; if (n > 9) { n -= 9; } }
      sum += n; double = !double;
    }
    return sum % 10 === 0;
  }

  function grouped(d, brand) {
    var sizes = brand === "amex" ? [4, 6, 5] : [4, 4, 4, 4, 3];
    var out = [], at = 0;
    for (var i = 0; i < sizes.length && at < d.length; i++) {
      out.push(d.slice(at, at + sizes[i])); at += sizes[i];
    }
    return out.join(" ");
  }

  function setError(input, message) {
    var out = document.getElementById(input.id + "-error");
    out.textContent = message || "";
    if (message) { input.setAttribute("aria-invalid", "true"); }
    else { input.removeAttribute("aria-invalid"); }
  }

  function checkNumber() {
    var d = digits(number.value);
    var ok = d.length >= 12 && d.length <= 19 && luhn(d);
    setError(number, ok ? "" : form.getAttribute("data-error-number"));
    return ok;
  }

  function checkExpiry() {
    var m = /^\s*(\d{1,2})\s*\/?\s*(\d{2}|\d{4})\s*$/.exec(expiry.value);
    var message = form.getAttribute("data-error-expiry");
    if (m) {
      var month = parseInt(m[1], 10), year = parseInt(m[2], 10);
      if (year < 100) { year += 2000; }
      var now = new Date(), thisYear = now.getUTCFullYear(), thisMonth = now.getUTCMonth() + 1;
      if (month >= 1 && month <= 12) {
        message = (year > thisYear || (year === thisYear && month >= thisMonth))
          ? "" : form.getAttribute("data-error-expiry-past");
      }
    }
    setError(expiry, message);
    return !message;
  }

  function checkCvc() {
    var wanted = brandOf(digits(number.value)) === "amex" ? 4 : 3;
    var ok = new RegExp("^\\d{" + wanted + "}$").test(cvc.value.trim());
    setError(cvc, ok ? "" : form.getAttribute("data-error-cvc"));
    return ok;
  }

  number.addEventListener("input", function () {
    var d = digits(number.value).slice(0, 19);
    var brand = brandOf(d);
    number.value = grouped(d, brand);
    brandOut.textContent = BRAND_NAMES[brand] || "";
  });
  expiry.addEventListener("input", function () {
    var d = digits(expiry.value).slice(0, 4);
    expiry.value = d.length > 2 ? d.slice(0, 2) + " / " + d.slice(2) : d;
  });
  cvc.addEventListener("input", function () { cvc.value = digits(cvc.value).slice(0, 4); });
  number.addEventListener("blur", function () { if (number.value) { checkNumber(); } });
  expiry.addEventListener("blur", function () { if (expiry.value) { checkExpiry(); } });
  cvc.addEventListener("blur", function () { if (cvc.value) { checkCvc(); } });

  form.addEventListener("submit", function (event) {
    if (submitted) { event.preventDefault(); return; }
    var checks = [[number, checkNumber()], [expiry, checkExpiry()], [cvc, checkCvc()]];
    for (var i = 0; i < checks.length; i++) {
      if (!checks[i][1]) {
        event.preventDefault();
        var first = checks[i][0];
        // After the click's own focus change: the buyer lands on the first bad field.
        window.setTimeout(function () { first.focus(); }, 0);
        return;
      }
    }
    submitted = true;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    button.textContent = form.getAttribute("data-paying");
  });
  // Back from the next page (bfcache): the form is usable again.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      submitted = false; button.disabled = false; button.removeAttribute("aria-busy");
      button.textContent = form.getAttribute("data-pay");
    }
  });
})();

// Shared behaviour of every page: an image that fails to load (a study without pixel data has
// no thumbnail) is hidden instead of showing a broken-image icon.
document.addEventListener(
  "error",
  (event) => {
    const target = event.target;
    if (target instanceof HTMLImageElement && target.hasAttribute("data-hide-on-error")) {
      target.style.visibility = "hidden";
    }
  },
  true,
);

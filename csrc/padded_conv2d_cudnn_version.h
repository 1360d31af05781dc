// torch.backends.cudnn.allow_tf32 (or cudnn.conv.fp32_precision), asked the way ATen's own
// convolutions ask, across torch releases: the accessor took no argument, then an op name
// string, then an op enum. The branch is chosen from the accessor's signature, and the enum type
// is taken from it (so that it is only named where it exists).
#pragma once

#include <ATen/Context.h>

#include <optional>
#include <string>
#include <type_traits>

namespace vqvae_fast::cudnn_graph::detail {

template <typename Method>
struct OptionalArgument {};
template <typename C, typename Op>
struct OptionalArgument<bool (C::*)(std::optional<Op>) const> {
  using type = Op;
};
// Whether OptionalArgument matched (C++17: torch <= 2.11 builds extensions without concepts).
template <typename T, typename = void>
struct HasType : std::false_type {};
template <typename T>
struct HasType<T, std::void_t<typename T::type>> : std::true_type {};

template <typename Context>
bool conv_tf32_allowed(const Context& context) {
  using Method = decltype(&Context::allowTF32CuDNN);
  if constexpr (std::is_same_v<Method, bool (Context::*)(const std::string&) const>) {
    return context.allowTF32CuDNN("conv");
  } else if constexpr (HasType<OptionalArgument<Method>>::value) {
    return context.allowTF32CuDNN(OptionalArgument<Method>::type::CONV);
  } else {
    return context.allowTF32CuDNN();
  }
}

inline bool tf32_allowed() { return conv_tf32_allowed(at::globalContext()); }

}  // namespace vqvae_fast::cudnn_graph::detail
